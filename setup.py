"""The wheel carries what a robot runs: the training recipe and the synthetic scenes that build the embedded model
(``groma_ros.training``, ``groma_ros.synthetic``, ``groma_ros.train``, ``groma_ros.evaluate``) only with
``GROMA_INSTALL_TRAINING=1``, as the CMake option of the same name does. Everything else is in pyproject.toml."""

import os
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

TRAINING_PACKAGES = ("groma_ros.training", "groma_ros.synthetic")
TRAINING_MODULES = {("groma_ros", "train"), ("groma_ros", "evaluate")}


def with_training() -> bool:
    return os.environ.get("GROMA_INSTALL_TRAINING", "").strip().lower() in ("1", "on", "true", "yes")


class ProductBuildPy(build_py):
    """Leaves the training modules that sit beside product code in ``groma_ros/`` out of the build."""

    def run(self):
        if not with_training():  # a build/ left by an earlier build with training would carry it along
            lib = Path(self.build_lib)
            for package in TRAINING_PACKAGES:
                shutil.rmtree(lib.joinpath(*package.split(".")), ignore_errors=True)
            for package, module in TRAINING_MODULES:
                lib.joinpath(*package.split("."), f"{module}.py").unlink(missing_ok=True)
        super().run()

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return modules if with_training() else [m for m in modules if (m[0], m[1]) not in TRAINING_MODULES]


exclude = [] if with_training() else [pattern for p in TRAINING_PACKAGES for pattern in (p, f"{p}.*")]
setup(packages=find_packages(include=["groma_ros", "groma_ros.*"], exclude=exclude),
      cmdclass={"build_py": ProductBuildPy})
