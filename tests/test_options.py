"""The plugin's options (harness/pytest/options.py): the `--seeds` grammar."""
import pytest

from harness.pytest.options import parse_seeds


@pytest.mark.parametrize("text, seeds", [("5", [0, 1, 2, 3, 4]), ("1", [0]), ("3,4,5", [3, 4, 5]),
                                         (" 7 , 2 ", [7, 2]), ("0,1", [0, 1])])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["0", "-2", "", " ", "x", "1.5", "3,3", "1,-1", "1,", ",2"])
def test_parse_seeds_rejects(text):
    with pytest.raises(ValueError, match=r"--seeds .*expected a count"):
        parse_seeds(text)
