import pytest

from bench.table import duration, number, render


def test_table_aligns_columns_and_right_aligns_numbers() -> None:
    text = render(["figure", "value"], [["delivered", "1,234 msg/s"], ["P99", "8.5 ms"]], right=[1])
    assert text.splitlines() == [
        "figure           value",
        "---------  -----------",
        "delivered  1,234 msg/s",
        "P99             8.5 ms",
    ]


def test_table_refuses_a_row_of_the_wrong_width() -> None:
    with pytest.raises(ValueError, match="expected 2"):
        render(["a", "b"], [["only one"]])


def test_numbers_get_separators_few_decimals_and_their_unit() -> None:
    assert number(12345, "msg/s") == "12,345 msg/s"
    assert number(1234.6) == "1,235"
    assert number(42.25, "ms") == "42.2 ms"
    assert number(0.123, "ms") == "0.12 ms"
    assert number(None, "ms") == "-"


def test_durations_read_as_hours_minutes_or_seconds() -> None:
    assert duration(42.4) == "42s"
    assert duration(185) == "3m05s"
    assert duration(3720) == "1h02m"
