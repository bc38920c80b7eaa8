"""pi_backend/_lib.py against ggml_ext/pi.h: the constants, every prototype (name, order,
return and argument types) and the structs (field names, order, types, offsets and sizes, the
C side's measured by compiling offsetof against pi.h)."""
from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pi_backend import _lib

GGML_EXT = Path(__file__).resolve().parents[1] / "ggml_ext"
# pi.h without its comments
HEADER = re.sub(r"/\*.*?\*/|//[^\n]*", "", (GGML_EXT / "pi.h").read_text(), flags=re.S)

# C base types -> ctypes; pointers are wrapped in POINTER, except char * and void *
BASE = {"int": ctypes.c_int, "int8_t": ctypes.c_int8, "int32_t": ctypes.c_int32, "int64_t": ctypes.c_int64,
        "size_t": ctypes.c_size_t, "float": ctypes.c_float, "double": ctypes.c_double,
        "pi_pool": _lib.pi_pool,
        "pi_model": _lib.pi_model, "pi_context": _lib.pi_context,
        "pi_hparams": _lib.pi_hparams, "pi_stats": _lib.pi_stats, "pi_type_desc": _lib.pi_type_desc}
ONE_STAR = {"char": ctypes.c_char_p, "void": ctypes.c_void_p}


def ctype_of(decl: str):
    """The ctypes type of a C type such as `const float *` (None for void)."""
    stars = decl.count("*")
    base = decl.replace("*", " ").replace("const", " ").split()
    assert len(base) == 1, f"cannot read the C type {decl!r}"
    base = base[0]
    if base == "void" and stars == 0:
        return None
    if base in ONE_STAR and stars:
        t, stars = ONE_STAR[base], stars - 1
    else:
        t = BASE[base]
    for _ in range(stars):
        t = ctypes.POINTER(t)
    return t


def prototypes() -> list[tuple[str, object, list]]:
    """(name, return type, argument types) of every PI_API function, in the header's order."""
    out = []
    for ret, name, args in re.findall(r"PI_API\s+([\w\s*]+?)\s*\b(pi_\w+)\s*\(([^)]*)\)\s*;",
                                      HEADER):
        args = " ".join(args.split())
        params = [] if args in ("", "void") else [a.strip() for a in args.split(",")]
        # drop each parameter's name: the last identifier
        types = [ctype_of(re.sub(r"\b\w+$", "", p)) for p in params]
        out.append((name, ctype_of(ret), types))
    return out


def constants() -> dict[str, int]:
    """#define PI_* numbers and the PI_* enumerators."""
    out = {k: int(v) for k, v in re.findall(r"#define\s+(PI_\w+)\s+(\d+)\s*$", HEADER, re.M)}
    for body in re.findall(r"typedef\s+enum\s*\{(.*?)\}", HEADER, re.S):
        out.update({k: int(v) for k, v in re.findall(r"(PI_\w+)\s*=\s*(-?\d+)", body)})
    return out


def structs() -> dict[str, list[tuple[str, object]]]:
    """{name: [(field, ctypes type)]} of the header's typedef'd structs with a body."""
    out = {}
    for body, name in re.findall(r"typedef\s+struct\s*\{(.*?)\}\s*(\w+)\s*;", HEADER, re.S):
        fields = re.findall(r"([\w\s*]+?)\s*\b(\w+)\s*;", body)
        out[name] = [(f, ctype_of(t)) for t, f in fields]
    return out


def test_the_parser_sees_the_whole_header():
    """Every PI_API line is a parsed prototype (a declaration the regex misses would go
    unchecked)."""
    assert len(prototypes()) == HEADER.count("PI_API ") - HEADER.count("#define PI_API ")
    assert {"pi_hparams", "pi_stats", "pi_type_desc"} <= set(structs())
    assert "PI_API_VERSION" in constants() and "PI_FFN_THRESHOLD" in constants()


def test_constants():
    for name, value in constants().items():
        assert getattr(_lib, name, None) == value, f"_lib.{name} should be {value}"


def test_prototypes():
    header = prototypes()
    ours = [(n, r, list(a)) for n, r, a in _lib._PROTOTYPES]
    assert [n for n, _, _ in ours] == [n for n, _, _ in header], "names or order differ"
    for (name, ret, args), (_, c_ret, c_args) in zip(ours, header):
        assert len(args) == len(c_args), f"{name}: {len(args)} arguments, pi.h has {len(c_args)}"
        assert ret == c_ret, f"{name}: returns {ret}, pi.h {c_ret}"
        for i, (a, c) in enumerate(zip(args, c_args)):
            assert a == c, f"{name}: argument {i} is {a}, pi.h {c}"


def test_every_prototype_is_exported():
    lib = _lib.lib()
    for name, _, _ in prototypes():
        assert hasattr(lib, name), f"the library does not export {name}"


def c_layout(tmp_path: Path, names: list[str], fields: dict) -> dict[str, list[int]]:
    """{struct: [sizeof, offsetof(field) for each field]} from a program compiled against pi.h."""
    lines = ["#include <stddef.h>", "#include <stdio.h>", '#include "pi.h"', "int main(void) {"]
    for s in names:
        lines.append(f'    printf("{s} %zu", sizeof({s}));')
        lines += [f'    printf(" %zu", offsetof({s}, {f}));' for f, _ in fields[s]]
        lines.append('    printf("\\n");')
    lines += ["    return 0;", "}"]
    src, exe = tmp_path / "layout.c", tmp_path / "layout"
    src.write_text("\n".join(lines) + "\n")
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler is needed (the library is built with one)"
    subprocess.run([cc, "-std=c11", f"-I{GGML_EXT}", "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {ln.split()[0]: [int(x) for x in ln.split()[1:]] for ln in out.splitlines()}


def test_structs(tmp_path):
    header = structs()
    layout = c_layout(tmp_path, sorted(header), header)
    for name, fields in header.items():
        cls = getattr(_lib, name)
        assert [f for f, _ in cls._fields_] == [f for f, _ in fields], f"{name}: fields differ"
        for (f, t), (_, c_t) in zip(cls._fields_, fields):
            assert t == c_t, f"{name}.{f}: {t}, pi.h {c_t}"
        size, *offsets = layout[name]
        assert ctypes.sizeof(cls) == size, f"sizeof({name})"
        assert [getattr(cls, f).offset for f, _ in fields] == offsets, f"{name}: offsets differ"


@pytest.mark.parametrize("decl,expected", [
    ("const float *", ctypes.POINTER(ctypes.c_float)), ("void **", ctypes.POINTER(ctypes.c_void_p)),
    ("pi_pool **", ctypes.POINTER(ctypes.POINTER(_lib.pi_pool))), ("const char *", ctypes.c_char_p),
    ("void", None), ("int64_t", ctypes.c_int64)])
def test_type_reader(decl, expected):
    assert ctype_of(decl) == expected
