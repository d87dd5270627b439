"""The spawn form: each service and its sizes offered, read back into user_options, the catalog's text escaped."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest

from calliope_hub.catalog import Catalog, CatalogError
from tests.catalog.conftest import broken_catalog, set_key

# --- the spawn form -----------------------------------------------------------------------------


class FormReader(HTMLParser):
    """The selects of an options form: {name: [(value, label, selected, group)]} and labels."""

    def __init__(self) -> None:
        super().__init__()
        self.selects: dict[str, list] = {}
        self.label_for: list[str] = []
        self.ids: dict[str, str] = {}
        self._select = self._group = None
        self._option = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "select":
            self._select = attrs["name"]
            self.ids[attrs["name"]] = attrs["id"]
            self.selects[self._select] = []
        elif tag == "optgroup":
            self._group = attrs["data-service"]
        elif tag == "option":
            self._option = [attrs["value"], "", "selected" in attrs, self._group]
        elif tag == "label":
            self.label_for.append(attrs["for"])

    def handle_data(self, data):
        if self._option is not None:
            self._option[1] += data

    def handle_endtag(self, tag):
        if tag == "option":
            self.selects[self._select].append(tuple(self._option))
            self._option = None
        elif tag == "optgroup":
            self._group = None


def test_options_form_offers_each_service_and_its_sizes(catalog: Catalog) -> None:
    form = FormReader()
    form.feed(catalog.options_form())
    assert sorted(form.label_for) == sorted(form.ids.values())  # every select is labelled
    services = form.selects["service"]
    assert [value for value, *_ in services] == ["lab", "chat", "waiide"]
    assert [value for value, _, selected, _ in services if selected] == ["lab"]
    sizes = form.selects["size"]
    assert [value for value, _, selected, _ in sizes if selected] == ["lab/small"]
    offered = {(group, value.split("/")[1]) for value, _, _, group in sizes}
    assert offered == {(s.name, size) for s in catalog.services.values() for size in s.sizes}
    assert ("Small (1 vCPU, 2 GiB)", "lab") in {(label, group) for _, label, _, group in sizes}
    assert "http" not in catalog.options_form()  # no external assets

    for value, *_ in sizes:
        service = value.split("/")[0]
        options = catalog.options_from_form({"service": [service], "size": [value], "_xsrf": ["x"]})
        choice = catalog.choose(options)
        assert f"{choice.service.name}/{choice.size_name}" == value


def test_options_from_form_refuses_mismatch_and_keeps_crafted_fields_for_choose(catalog: Catalog) -> None:
    with pytest.raises(CatalogError, match="the size 'lab/large' belongs to service 'lab', but service 'chat'"):
        catalog.options_from_form({"service": ["chat"], "size": ["lab/large"]})
    with pytest.raises(CatalogError, match="'service' must have exactly one value, got 2"):
        catalog.options_from_form({"service": ["chat", "lab"]})
    crafted = catalog.options_from_form({"service": ["lab"], "size": ["small"], "image": ["evil"]})
    assert crafted == {"service": "lab", "size": "small", "image": "evil"}
    with pytest.raises(CatalogError, match="option 'image' cannot be set"):
        catalog.choose(crafted)


def test_options_form_escapes_catalog_text(tmp_path: Path) -> None:
    directory = broken_catalog(tmp_path, set_key("display_name", "<script>alert(1)</script>"))
    html = Catalog.load(directory).options_form()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
