"""UniSAR-TF: one model for search and recommendation, as a TensorFlow production system.

Loose ranges here; requirements.lock pins the exact, tested stack (`make install`).
"""

from setuptools import find_packages, setup

setup(
    name="unisar-tf",
    version="0.1.0",
    description="UniSAR (SIGIR 2024) search + recommendation ranking on TF/TFRS/TFX",
    python_requires=">=3.10,<3.11",
    packages=find_packages(include=["unisar_tf*", "feature_specs*", "pipeline*", "serving*"]),
    install_requires=[
        "tensorflow>=2.15,<2.16",
        "tensorflow-recommenders>=0.7.3,<0.8",
        "tensorflow-ranking>=0.5.5,<0.6",
        "numpy>=1.23,<2",
        "scipy>=1.9",  # sparse co-occurrence of the non-learned baselines
    ],
    extras_require={
        "pipeline": ["tfx[kfp]>=1.15,<1.16"],
        "serving": ["tensorflow-serving-api>=2.15,<2.16", "redis>=5"],  # redis: history store
        "test": ["pytest>=7", "hypothesis>=6.100"],
    },
    entry_points={
        "console_scripts": [
            "unisar-demo=unisar_tf.tools.demo:main",
            "unisar-param-count=unisar_tf.tools.param_count:main",
            "unisar-score=serving.client:main",
            "unisar-stand-in=serving.server:main",
        ],
    },
)
