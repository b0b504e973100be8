"""The book's build helpers: static assets from npm, checked and unpacked safely."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile

import pytest

from xrg import book
from xrg.errors import ConfigError


def _tarball(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _asset(data: bytes, **extra) -> dict:
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    return {
        "package": "demo",
        "version": "1.2.3",
        "tarball": "https://registry.invalid/demo-1.2.3.tgz",
        "integrity": integrity,
        "prefix": "package/dist/",
        "keep": ("embed.js", ".woff"),
        "check": "embed.js",
        **extra,
    }


def test_static_assets_unpack_only_what_is_kept_from_the_cached_tarball(tmp_path, monkeypatch):
    data = _tarball(
        {
            "package/dist/embed.js": b"js",
            "package/dist/font.woff": b"font",
            "package/dist/embed-amd.js": b"amd",
            "package/src/index.ts": b"ts",
        }
    )
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "demo-1.2.3.tgz").write_bytes(data)
    monkeypatch.setattr(book, "STATIC_ASSETS", {"demo": _asset(data)})
    static = book.ensure_static_assets(tmp_path / "static", cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in (static / "demo").iterdir()) == ["VERSION", "embed.js", "font.woff"]
    assert (static / "demo" / "embed.js").read_bytes() == b"js"
    # Up to date: nothing is fetched or unpacked again, even with the cache gone.
    (tmp_path / "cache" / "demo-1.2.3.tgz").unlink()
    assert book.ensure_static_assets(tmp_path / "static", cache_dir=tmp_path / "cache") == static


def test_a_tarball_that_does_not_match_its_checksum_is_refused(tmp_path, monkeypatch):
    good = _tarball({"package/dist/embed.js": b"js"})
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "demo-1.2.3.tgz").write_bytes(_tarball({"package/dist/embed.js": b"evil"}))
    monkeypatch.setattr(book, "STATIC_ASSETS", {"demo": _asset(good)})
    with pytest.raises(ConfigError, match="registry checksum"):
        book.ensure_static_assets(tmp_path / "static", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "static" / "demo").exists()


def test_a_tarball_member_escaping_the_folder_is_refused(tmp_path, monkeypatch):
    data = _tarball({"package/dist/embed.js": b"js", "package/dist/../../../escape.woff": b"x"})
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "demo-1.2.3.tgz").write_bytes(data)
    monkeypatch.setattr(book, "STATIC_ASSETS", {"demo": _asset(data)})
    with pytest.raises(tarfile.FilterError):
        book.ensure_static_assets(tmp_path / "static", cache_dir=tmp_path / "cache")
    assert not list(tmp_path.rglob("escape.woff"))
    assert not (tmp_path / "static" / "demo").exists() and not (tmp_path / "static" / "demo.partial").exists()


def test_an_unreachable_registry_says_where_to_put_the_file(tmp_path, monkeypatch):
    data = _tarball({"package/dist/embed.js": b"js"})
    monkeypatch.setattr(book, "STATIC_ASSETS", {"demo": _asset(data, tarball="http://127.0.0.1:9/demo.tgz")})
    with pytest.raises(ConfigError, match="offline machine put that file at .*demo-1.2.3.tgz"):
        book.ensure_static_assets(tmp_path / "static", cache_dir=tmp_path / "cache")


def test_the_pinned_assets_are_the_ones_the_config_loads():
    config = (book.ROOT / "_config.yml").read_text()
    for folder, asset in book.STATIC_ASSETS.items():
        assert f"{folder}/{asset['check']}" in config
        assert asset["integrity"].startswith("sha512-") and asset["tarball"].startswith("https://registry.npmjs.org/")


def test_build_html_refuses_missing_notebooks(tmp_path):
    with pytest.raises(ConfigError, match="not executed yet"):
        book.build_html(executed_dir=tmp_path / "executed", build_dir=tmp_path / "_build")


def test_the_tiny_and_cpu_profiles_run_their_kernels_on_one_thread():
    assert book.book_settings("tiny")["kernel_threads"] == 1
    cpu = book.book_settings("cpu")  # two one-thread kernels side by side on a 2-core machine
    assert (cpu["kernel_threads"], cpu["parallel_notebooks"]) == (1, 2)
    assert book.book_settings("paper")["kernel_threads"] is None  # the default: torch's own choice


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("{kernel_thread: 1}", "unknown book settings"),
        ("{kernel_threads: 0}", "positive integer"),
        ("{kernel_threads: two}", "positive integer"),
    ],
)
def test_bad_book_settings_are_refused(tmp_path, section, message):
    profile = tmp_path / "mine.yaml"
    profile.write_text(f"profile: mine\nseed: 0\ndata: {{image_size: 32}}\nbook: {section}\n")
    with pytest.raises(ConfigError, match=message):
        book.book_settings(str(profile))


def test_thread_limit_reaches_started_processes_and_is_undone(monkeypatch):
    import os
    import subprocess
    import sys

    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    probe = (
        "import os, torch; print(os.environ['OMP_NUM_THREADS'], os.environ['MKL_NUM_THREADS'], torch.get_num_threads())"
    )
    with book.thread_limit(1):
        assert torch.get_num_threads() == 1
        started = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert started.split() == ["1", "1", "1"]
    assert os.environ["OMP_NUM_THREADS"] == "7" and "MKL_NUM_THREADS" not in os.environ
    assert torch.get_num_threads() == before
    with book.thread_limit(None):
        assert os.environ["OMP_NUM_THREADS"] == "7"


def test_notebook_needs_name_real_notebooks_without_a_cycle():
    names = set(book.notebook_names())
    assert set(book.NOTEBOOK_NEEDS) <= names and book.PROVENANCE_NOTEBOOK not in book.NOTEBOOK_NEEDS
    done: set[str] = set()
    while len(done) < len(book.NOTEBOOK_NEEDS):  # peel off the notebooks whose needs are met
        ready = {n for n, needs in book.NOTEBOOK_NEEDS.items() if n not in done and set(needs) <= done}
        assert ready, f"a cycle among {sorted(set(book.NOTEBOOK_NEEDS) - done)}"
        done |= ready
    assert all(set(needs) <= names for needs in book.NOTEBOOK_NEEDS.values())


def test_parallel_notebooks_wait_for_what_they_need_and_a_failure_stops_the_rest(tmp_path, monkeypatch):
    # Each "notebook" appends its name to a log when it starts and when it ends; 04 fails.
    log = tmp_path / "log"
    monkeypatch.setattr(book, "_CHILD", (
        "import sys, time\n"
        f"log = open({str(log)!r}, 'a'); log.write('start ' + sys.argv[1] + '\\n'); log.flush()\n"
        "time.sleep(0.3)\n"
        "log.write('end ' + sys.argv[1] + '\\n'); log.close()\n"
        "sys.exit(3 if sys.argv[1] == '04_xraygan' else 0)\n"
    ))  # fmt: skip
    names = [n for n in book.notebook_names() if n != book.PROVENANCE_NOTEBOOK]
    todo = {name: ({}, f"stamp-{name}") for name in names}
    finished = {}
    with pytest.raises(book.NotebookFailed, match="notebook 04_xraygan failed .*04_xraygan.failed.ipynb"):
        book._execute_in_parallel(todo, tmp_path, 2, 1, lambda n, s, stamp: finished.setdefault(n, stamp), 0.0)
    events = log.read_text().split("\n")[:-1]
    for name, needs in book.NOTEBOOK_NEEDS.items():
        if f"start {name}" in events:
            for need in needs:
                assert events.index(f"end {need}") < events.index(f"start {name}"), f"{name} started before {need}"
    assert "04_xraygan" not in finished and all(finished[n] == f"stamp-{n}" for n in finished)
    assert sum(e.startswith("start") for e in events) == sum(e.startswith("end") for e in events)  # none left running
    assert max(sum(1 for e in events[: i + 1] if e.startswith("start")) - sum(1 for e in events[: i + 1] if e.startswith("end"))
               for i in range(len(events))) <= 2  # fmt: skip


def test_a_changed_profile_marks_the_executed_notebooks_stale(tmp_path):
    from xrg.book import library_fingerprint
    from xrg.profiles import PROFILES_DIR

    for path in PROFILES_DIR.glob("*.yaml"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    assert library_fingerprint(tmp_path) == library_fingerprint()  # the project's profiles by default
    cpu = tmp_path / "cpu.yaml"
    cpu.write_text(cpu.read_text().replace("lr: 0.0005", "lr: 0.0004", 1))
    assert library_fingerprint(tmp_path) != library_fingerprint()


def test_notebooks_side_by_side_start_a_gap_apart(tmp_path, monkeypatch):
    # Two notebooks that need nothing: the second starts start_gap seconds after the first.
    log = tmp_path / "log"
    monkeypatch.setattr(book, "_CHILD", (
        "import sys, time\n"
        f"open({str(log)!r}, 'a').write(sys.argv[1] + ' ' + repr(time.time()) + '\\n')\n"
    ))  # fmt: skip
    todo = {name: ({}, name) for name in ("01_data", "02_encoder")}
    book._execute_in_parallel(todo, tmp_path, 2, 1, lambda n, s, stamp: None, 1.0)
    starts = sorted(float(line.split()[1]) for line in log.read_text().splitlines())
    assert len(starts) == 2 and starts[1] - starts[0] >= 0.9
