"""The dispatcher's HTTP face: the JSON API (``api.py``), the pages people look at
(``pages.py``), and the application that puts them together (``app.py``).

May import: control and every layer below it (tests/unit/test_architecture.py)."""
