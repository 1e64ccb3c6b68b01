from hypothesis import given
from hypothesis import strategies as st
from telemetry_common.domain.alert_rules import OPERATORS, Rule

finite = st.floats(-1e6, 1e6, allow_nan=False)


@given(
    operator=st.sampled_from(sorted(OPERATORS)),
    threshold=finite,
    clear=st.none() | finite,
    value=finite,
)
def test_a_value_concerns_a_rule_when_past_its_threshold_or_its_clear_threshold(
    operator: str, threshold: float, clear: float | None, value: float
) -> None:
    rule = Rule.model_validate(
        {
            "_id": "r",
            "name": "r",
            "metric": "t",
            "operator": operator,
            "threshold": threshold,
            "clear_threshold": clear,
        }
    )
    limits = [threshold] if clear is None else [threshold, clear]
    check = OPERATORS[operator]
    assert rule.may_matter(value) == any(check(value, limit) for limit in limits)
