"""The Hydra config tree lives at top-level conf/ and ships inside the package as alignkit.conf."""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["alignkit", "alignkit.*"]) + ["alignkit.conf"])
