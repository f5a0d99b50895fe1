"""Pure helpers of the server module (the handlers run end to end in tests/e2e)."""

import pytest

from fim_lsp.server import menu_label


@pytest.mark.parametrize(
    "text, label",
    [
        (" + 1", " + 1"),  # kept as typed: lsp-mode inserts the label
        ("pa = 1\r\nx = 2", "pa = 1"),
        ("\n    return x\n", "return x"),  # starts on a new line: the first line with code
    ],
)
def test_menu_label(text, label):
    assert menu_label(text) == label
