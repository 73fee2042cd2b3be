"""Build hook: the operator kit (config templates, alerts, dashboard, systemd units,
runbooks, .env.example) ships inside the wheel as `email_ingestion/kit/`.

The files stay where operators and the tests look for them in a checkout (config/,
deploy/systemd/, docs/runbooks/); this copies them into the built package, so `pip install`
alone gives a server everything `email-ingest kit` and `email-ingest units` hand out, with
one source for each file. Everything else is declared in pyproject.toml."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# (source in the checkout, place under email_ingestion/kit/)
KIT = (("config", "config"), ("deploy/systemd", "systemd"), ("docs/runbooks", "runbooks"),
       (".env.example", "env.example"))
SCRIPTS = ("start.sh", "stop.sh", "health_check.sh", "start.ps1", "stop.ps1", "health_check.ps1")


class BuildWithKit(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "email_ingestion" / "kit"
        for source, name in KIT:
            path = ROOT / source
            if not path.exists():  # building from an sdist that lacks it: nothing to copy
                continue
            if path.is_dir():
                shutil.copytree(path, target / name, dirs_exist_ok=True)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / name)
        (target / "scripts").mkdir(parents=True, exist_ok=True)
        for script in SCRIPTS:
            shutil.copy2(ROOT / "scripts" / script, target / "scripts" / script)


setup(cmdclass={"build_py": BuildWithKit})
