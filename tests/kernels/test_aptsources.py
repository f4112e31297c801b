"""The Debian mirror is derived from the configured apt sources, never named by the lab."""
from __future__ import annotations

import pytest

from tests.needs import missing

from overlaylab.kernels import aptsources as A

DEB822 = """\
Types: deb
# a comment line
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: https://thirdparty.example/node_20.x
Suites: nodistro
Components: main
Signed-By: /usr/share/keyrings/nodesource.gpg

Enabled: no
Types: deb
URIs: http://disabled.example/debian
Suites: sid
Components: main
"""

ONE_LINE = """\
# comment
deb [arch=amd64 signed-by=/etc/apt/keyrings/vendor.gpg] https://vendor.example/apt cloud-sdk-bookworm main
deb http://security.example/debian-security bullseye-security main
deb-src http://src.example/debian bullseye main
deb http://old.example/debian bullseye-updates main
deb http://old.example/debian bullseye main non-free   # trailing comment
"""


def test_deb822_stanzas_expand_to_one_entry_per_suite_and_skip_disabled():
    entries = A.parse_deb822(DEB822, "x.sources")
    suites = [(e.uri, e.suite) for e in entries]
    assert ("http://mirror.example/debian", "bookworm") in suites
    assert ("http://mirror.example/debian", "bookworm-updates") in suites
    assert not any("disabled.example" in u for u, _ in suites)
    main = entries[0]
    assert main.components == ("main", "contrib")
    assert main.signed_by == "/usr/share/keyrings/debian-archive-keyring.gpg"


def test_deb822_mirror_skips_security_and_third_party():
    m = A.choose_mirror(A.parse_deb822(DEB822))
    assert m.uri == "http://mirror.example/debian"
    assert m.signed_by == "/usr/share/keyrings/debian-archive-keyring.gpg"


def test_one_line_sources_prefer_the_uri_serving_a_bare_release():
    entries = A.parse_one_line(ONE_LINE)
    assert [e.type for e in entries].count("deb-src") == 1
    assert entries[0].signed_by == "/etc/apt/keyrings/vendor.gpg"
    m = A.choose_mirror(entries)
    assert m.uri == "http://old.example/debian"
    assert m.signed_by is None


def test_updates_only_uri_loses_to_main_archive_uri():
    text = "deb http://a.example/debian bookworm-updates main\ndeb http://b.example/debian bookworm main\n"
    assert A.choose_mirror(A.parse_one_line(text)).uri == "http://b.example/debian"


def test_no_debian_source_is_a_clear_error():
    with pytest.raises(A.NoDebianMirror):
        A.choose_mirror(A.parse_one_line("deb https://vendor.example/apt cloud-sdk-bookworm main\n"))


def test_inline_signed_by_key_is_not_passed_on():
    text = ("Types: deb\nURIs: http://m.example/debian\nSuites: trixie\nComponents: main\n"
            "Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n abc\n -----END PGP PUBLIC KEY BLOCK-----\n")
    (e,) = A.parse_deb822(text)
    assert e.suite == "trixie" and e.signed_by is None


def test_sources_list_for_another_suite(tmp_path):
    m = A.Mirror("http://mirror.example/debian", "/k.gpg")
    path = A.write_sources_list(str(tmp_path / "s.list"), m, "sid")
    assert open(path).read() == "deb [signed-by=/k.gpg] http://mirror.example/debian sid main\n"
    assert A.sources_list_line(A.Mirror("http://m.example/debian"), "bullseye") == \
        "deb http://m.example/debian bullseye main\n"


def test_configured_mirror_reads_files_of_both_styles(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("deb https://vendor.example/apt cloud-sdk-bookworm main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    (tmp_path / "sources.list.d" / "x.list.disabled").write_text("deb http://no.example/debian sid main\n")
    assert A.configured_mirror(str(tmp_path)).uri == "http://mirror.example/debian"


def test_this_machine_has_a_debian_mirror():
    try:
        m = A.configured_mirror()
    except A.NoDebianMirror:
        missing("no Debian apt source configured here")
    assert m.uri.startswith(("http://", "https://", "file:", "mirror+"))
