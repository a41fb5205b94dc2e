"""The progress lines `python -m tests.localnet up` prints during the npm install.

The log lines below are in npm 10's format at ``--loglevel info`` (the fetch and cache lines
come from a real chopsticks install, the ``run`` lines' format from an install of a package
with an install script; the sqlite3 command is the one npm ran for chopsticks). The install
itself is run by test_localnet.py.
"""

from __future__ import annotations

from pathlib import Path

from tests.localnet.network import _npm_progress, _unpacked

NPM_LOG = (
    "npm http fetch GET 200 https://registry.npmjs.org/@acala-network%2fchopsticks 1057ms"
    " (cache updated)\n"
    "npm http cache string-width@https://registry.npmjs.org/string-width/-/"
    "string-width-8.3.0.tgz 0ms (cache hit)\n"
    "npm info run slowpkg@1.0.0 install ../pkg sleep 1\n"
    "npm info run sqlite3@5.1.7 install node_modules/sqlite3"
    " prebuild-install -r napi || node-gyp rebuild\n"
    "npm info run slowpkg@1.0.0 install { code: 0, signal: null }\n"
)


def test_the_progress_names_the_install_scripts_still_running(tmp_path: Path) -> None:
    log = tmp_path / "npm-install.log"
    assert _npm_progress(log) == "starting"
    log.write_text(NPM_LOG)
    assert _npm_progress(log) == ("2 npm requests; running the install script of sqlite3@5.1.7")
    log.write_text(NPM_LOG + "npm info run sqlite3@5.1.7 install { code: 0, signal: null }\n")
    assert _npm_progress(log) == "2 npm requests"


def test_unpacked_packages_count_scoped_ones_one_by_one(tmp_path: Path) -> None:
    modules = tmp_path / "node_modules"
    assert _unpacked(modules) == 0
    for name in ("yargs", "@polkadot/api", "@polkadot/util", ".bin", ".package-lock.json"):
        (modules / name).mkdir(parents=True)
    assert _unpacked(modules) == 3
