"""Build hook: ship the repository's config.toml inside the installed package (``kkoma/config.toml``).

Everything else about the package is declared in pyproject.toml. config.toml stays at the repository root, where a
reader of the source finds it; an installed wheel reads the copy made here as its defaults.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConfig(build_py):
    def run(self):
        super().run()
        if not self.editable_mode:  # an editable install reads the checkout's own config.toml
            self.copy_file("config.toml", str(Path(self.build_lib) / "kkoma" / "config.toml"))


setup(cmdclass={"build_py": BuildPyWithConfig})
