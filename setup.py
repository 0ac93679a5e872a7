"""maml-tf: MAML (Liu et al., ACM MM 2019) in TensorFlow 2 / Keras 3."""

from setuptools import find_packages, setup

setup(
    name="maml-tf",
    version="0.1.0",
    description=("Multimodal Attentive Metric Learning (MAML) for top-n "
                 "recommendation: a TensorFlow 2 / Keras 3 port faithful to "
                 "the original release"),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["maml_tf", "maml_tf.*"]),
    package_data={"maml_tf": ["datasets/office/*"]},
    include_package_data=True,
    # `maml-tf <command>` (maml_tf/commands/); `python -m maml_tf` too.
    entry_points={"console_scripts": ["maml-tf=maml_tf.commands:main"]},
    license="Apache-2.0",
    # Pinned to the minor versions this port is tested on: TF 2.21 with
    # Keras 3.15; tf-keras matches TF for TensorFlow Recommenders, which
    # needs Keras 2 under tf.keras (see maml_tf/retrieval.py).
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<3.16",
        "tf-keras>=2.21,<2.22",
        "tensorflow-recommenders==0.7.7",
        "gensim>=4.4,<4.5",
        "numpy>=2.0,<3",
        "pandas>=2.2,<4",
        "scipy>=1.11,<2",
        "absl-py>=2.1,<3",
        "matplotlib>=3.8,<4",
        "tensorboard>=2.21,<2.22",
        # scripts/tune.py: keras-tuner's oracles; its Bayesian optimisation
        # needs scikit-learn (and scipy, which scikit-learn brings).
        "keras-tuner>=1.4,<1.5",
        "scikit-learn>=1.9,<2",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100", "ruff>=0.6,<1"],
        "serving": ["tensorflow-serving-api>=2.21,<2.22"],
    },
)
