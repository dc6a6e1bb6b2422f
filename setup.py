"""gatescope: prompt learning on frozen CLIP with adaptive gates and a diagnosis of their collapse."""
from setuptools import find_packages, setup

setup(
    name="gatescope",
    version="0.1.0",
    description="CoOp-family prompt learning on frozen CLIP, adaptive gates as plugins, "
    "and diagnostics of gate collapse",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # Only our own top-level packages: nothing that shadows datasets, clip, open_clip or dassl.
    packages=find_packages(include=["trainers", "trainers.*", "gates", "gates.*",
                                    "diagnostics", "diagnostics.*"]),
    package_data={"trainers.backbone": ["model_configs/*.json", "pretrained/*.safetensors"],
                  "trainers.tools": ["grids/*.yaml"]},
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "open_clip_torch>=2.24",
        "yacs",
        "tabulate",
        "pluggy>=1.5",
        "safetensors",  # the shipped demo weights (open_clip needs it too)
        "tqdm",
        "filelock",
        "tensorboard",
        "matplotlib",
        "Pillow",
        "numpy",
    ],
    extras_require={
        "test": ["pytest"],
        "sweep": ["ray>=2.9"],
    },
    entry_points={
        "console_scripts": ["gatescope = trainers.cli:main"],
    },
)
