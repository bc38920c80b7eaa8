"""The standalone C checks (tests/c/test_pi.c) built against the library sources and run: the
validation of every entry point, the SIMD kernels against their scalar twins, and the rows8
layout. `make asan` runs the same program under AddressSanitizer and UBSan."""
import glob
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFLAGS = ["-std=c11", "-O1", "-D_GNU_SOURCE", "-fno-strict-aliasing", "-Wall", "-Wextra",
          "-Wno-unused-parameter", "-Werror", "-I" + os.path.join(ROOT, "ggml_ext")]


def test_c_kernel_checks(tmp_path):
    cc = os.environ.get("CC", "gcc")
    exe = str(tmp_path / "test_c")
    sources = sorted(glob.glob(os.path.join(ROOT, "ggml_ext", "*.c")))
    build = subprocess.run([cc, *CFLAGS, "-o", exe, os.path.join(ROOT, "tests", "c", "test_pi.c"),
                            *sources, "-lpthread", "-lm"], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([exe], capture_output=True, text=True, timeout=600)
    summary = run.stdout.strip().splitlines()[-1]
    assert run.returncode == 0, run.stdout[-3000:]
    passed, failed = int(summary.split()[0]), int(summary.split()[2])
    assert failed == 0, summary
    # every group main() runs made checks (a group that silently checks nothing is a defect)
    import re
    src = open(os.path.join(ROOT, "tests", "c", "test_pi.c")).read()
    groups = re.findall(r"^\s*RUN\((.*)\);$", src[src.index("int main(void)"):], re.M)
    ran = dict(re.findall(r"^group (.*): (\d+) checks$", run.stdout, re.M))
    assert groups and sorted(ran) == sorted(groups), (groups, ran)
    assert all(int(n) > 0 for n in ran.values()), ran
    assert sum(int(n) for n in ran.values()) == passed
