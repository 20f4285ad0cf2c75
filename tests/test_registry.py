import pytest

from alignkit.algorithms import ALGORITHMS
from alignkit.registry import Registry, UnknownNameError


def test_unknown_name_lists_the_registered_ones():
    registry: Registry[int] = Registry("widget")
    registry.register("b")(2)
    registry.register("a")(1)
    with pytest.raises(UnknownNameError, match=r"unknown widget 'c'; registered: a, b"):
        registry.get("c")


def test_double_registration_is_refused():
    registry: Registry[int] = Registry("widget")
    registry.register("a")(1)
    with pytest.raises(ValueError, match="twice"):
        registry.register("a")(2)


def test_algorithms_are_registered_with_their_schema_and_data_kind():
    assert {"dpo", "sft"} <= set(ALGORITHMS.names())
    for name in ALGORITHMS:
        cls = ALGORITHMS.get(name)
        assert cls.data_kind in {"pairs", "prompts"}
        assert cls.config_class.__dataclass_fields__["name"]
