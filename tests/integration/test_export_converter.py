"""llama.cpp's converter, unpacked once into the cache however many exports start together."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_exports_started_together_unpack_the_converter_once(tmp_path):
    """Processes that each find no converter yet: one unpacks it, the others wait and use it."""
    import io
    import os
    import subprocess
    import sys
    import tarfile

    sdist = tmp_path / "llama_cpp_python-0.0.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name in ("convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py", "LICENSE"):
            data = b"# " + name.encode() + b"\n" * 5_000_000  # big enough that the unpacks overlap
            info = tarfile.TarInfo(f"llama_cpp_python-0.0.0/vendor/llama.cpp/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import rl.export.gguf as g; "
              "g.llama_cpp_version = lambda: '0.0.0'; print(g.converter_dir())")
    env = {**os.environ, "TOOLGYM_CACHE": str(tmp_path / "cache"), "TOOLGYM_LLAMA_CPP_SDIST": str(sdist)}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(6)]
    results = [(p.returncode, out, err) for p in procs for out, err in [p.communicate(timeout=120)]]
    assert all(code == 0 for code, _, _ in results), [err[-500:] for _, _, err in results]
    target = tmp_path / "cache" / "llama.cpp-0.0.0"
    assert {out.strip() for _, out, _ in results} == {str(target)}
    assert (target / "convert_hf_to_gguf.py").exists() and not target.with_name(target.name + ".partial").exists()
