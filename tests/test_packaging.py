"""The distribution's top-level import names are its own in the environment it runs in.

`feature_specs`, `pipeline` and `serving` are installed as top-level packages (the design
card puts the folders at the top), names that other distributions could also use: two
distributions shipping `serving/` in one environment would overwrite each other's files.
`make install` puts the project in its own virtualenv; this test fails when anything else
installed there ships a package of the same name.
"""

import importlib
import importlib.metadata
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP_LEVEL = ("unisar_tf", "feature_specs", "pipeline", "serving")


def owners_of(names, distributions_by_package):
    """{name: sorted distinct distributions shipping a top-level package `name`}."""
    return {name: sorted(set(distributions_by_package.get(name, ()))) for name in names}


def test_owners_of_names_every_distribution_of_a_clashing_name():
    mapping = {"serving": ["unisar-tf", "unisar-tf", "other-dist"], "pipeline": ["unisar-tf"]}
    assert owners_of(("serving", "pipeline", "feature_specs"), mapping) == {
        "serving": ["other-dist", "unisar-tf"],
        "pipeline": ["unisar-tf"],
        "feature_specs": [],
    }


def test_no_other_installed_distribution_ships_our_top_level_packages():
    owners = owners_of(TOP_LEVEL, importlib.metadata.packages_distributions())
    assert owners == {name: ["unisar-tf"] for name in TOP_LEVEL}, (
        "another installed distribution ships a package with one of this project's top-level "
        f"names: {owners}; install the project into its own virtualenv (make install)"
    )


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_top_level_packages_import_from_this_checkout(name):
    module = importlib.import_module(name)
    assert os.path.dirname(os.path.dirname(os.path.abspath(module.__file__))) == REPO
