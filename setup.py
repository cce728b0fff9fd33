from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec(Path("hydrapicker/__init__.py").read_text().split("from .types")[0], version)

setup(
    name="hydrapicker",
    version=version["__version__"],
    description="Multi-head deep-learning particle picker for cryo-EM, with RELION and CryoSPARC adapters",
    long_description=Path("README.md").read_text() if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["hydrapicker", "hydrapicker.*", "relion_hydra", "relion_hydra.*",
                                    "cryosparc_hydra", "cryosparc_hydra.*"]),
    package_data={"hydrapicker": ["weights/*.pt", "weights/*.json"]},
    install_requires=[
        "torch>=2.0",  # open range: users bring the build that matches their GPU
        "numpy>=1.22",
        "scipy>=1.8",
        "pandas>=1.4",
        "mrcfile>=1.4",
        "starfile>=0.5",
        "emtable>=0.0.13",
        "matplotlib>=3.5",
        "tqdm>=4.60",
    ],
    extras_require={
        "cryosparc": ["cryosparc-tools~=5.0.0"],  # v4.7 servers: pip install "cryosparc-tools~=4.7.0",
        "test": ["pytest>=7"],
    },
    entry_points={"console_scripts": [
        "hydra=hydrapicker.cli:entry_point",
        "relion_hydra_pick=relion_hydra.pick_job:entry_point",
        "relion_hydra_train=relion_hydra.train_job:entry_point",
        "cryosparc_hydra=cryosparc_hydra.cli:entry_point",
    ]},
    scripts=[],
)
