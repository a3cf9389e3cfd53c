"""recbole-genair: GenAIR (Generative Archetype-grounded Item Representations) as a RecBole plugin.

Dependency pins (why each exists is explained in README.md, "Why these pins"):
RecBole 1.2.1 caps ray<=2.6.3; ray 2.6.3 needs numpy<2 (np.bool8), setuptools<81
(pkg_resources) and pyarrow<20.  This set is `pip check`-clean.
"""
from setuptools import find_packages, setup

setup(
    name="recbole-genair",
    version="0.1.0",
    description="GenAIR: LLM archetype item representations for RecBole's sequential models",
    packages=find_packages(include=["recbole_genair", "recbole_genair.*"]),
    python_requires=">=3.10,<3.12",
    install_requires=[
        "torch==2.13.0",
        "recbole==1.2.1",
        "ray[tune]==2.6.3",
        "numpy>=1.24,<2",
        "scipy>=1.10,<1.14",
        "pandas>=2.0,<3",
        "pyarrow>=12,<20",
        "setuptools>=65,<81",
        "transformers>=4.46,<5",
        "gguf>=0.10",
        "accelerate>=1.0",
        "scikit-learn>=1.3,<1.7",
        "tqdm",
        "pyyaml",
        "pytest",
    ],
    entry_points={"console_scripts": []},
)
