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
    return {"package": "demo", "version": "1.2.3", "tarball": "https://registry.invalid/demo-1.2.3.tgz",
            "integrity": integrity, "prefix": "package/dist/", "keep": ("embed.js", ".woff"), "check": "embed.js",
            **extra}


def test_static_assets_unpack_only_what_is_kept_from_the_cached_tarball(tmp_path, monkeypatch):
    data = _tarball({"package/dist/embed.js": b"js", "package/dist/font.woff": b"font",
                     "package/dist/embed-amd.js": b"amd", "package/src/index.ts": b"ts"})
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
