"""flockrt.__all__ lists exactly the public names, and each of them is importable."""

from __future__ import annotations

import flockrt
import flockrt.actors
import flockrt.client
import flockrt.errors
import flockrt.supervisor


def test_all_names_exist() -> None:
    for name in flockrt.__all__:
        assert hasattr(flockrt, name), name


def test_all_is_complete_and_sorted() -> None:
    for name in flockrt.__all__:  # the lazy ones land in the module's namespace too
        getattr(flockrt, name)
    typing_helpers = {"Any", "TYPE_CHECKING"}  # of the lazy-import machinery
    public = {
        name
        for name, value in vars(flockrt).items()
        if not name.startswith("_") and not isinstance(value, type(flockrt)) and name not in typing_helpers
    }
    assert public == set(flockrt.__all__)
    assert set(dir(flockrt)) >= set(flockrt.__all__)
    assert list(flockrt.__all__) == sorted(flockrt.__all__)


def test_subpackages_are_reexported() -> None:
    for module in (flockrt.actors, flockrt.supervisor, flockrt.errors, flockrt.client):
        for name in module.__all__:
            assert getattr(flockrt, name) is getattr(module, name), name


def test_every_error_derives_from_flock_error() -> None:
    for name in flockrt.errors.__all__:
        assert issubclass(getattr(flockrt.errors, name), flockrt.FlockError)
