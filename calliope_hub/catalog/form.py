"""The spawn page's options form, and reading its fields back into user_options.

The size select lists every service's sizes as "service/size" values grouped per service, so
a submitted pair is unambiguous even where JavaScript is off; a small inline script shows only
the chosen service's sizes. Catalog text is HTML-escaped; no external assets are loaded.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

from .models import CatalogError

if TYPE_CHECKING:
    from .catalog import Catalog

SERVICE_FIELD_ID = "calliope-service"
SIZE_FIELD_ID = "calliope-size"

_SCRIPT = """<script>
(function () {
  var service = document.getElementById("calliope-service");
  var size = document.getElementById("calliope-size");
  function showSizesOf(name, keepSelection) {
    var groups = size.getElementsByTagName("optgroup");
    for (var i = 0; i < groups.length; i++) {
      var mine = groups[i].getAttribute("data-service") === name;
      groups[i].hidden = !mine;
      groups[i].disabled = !mine;
    }
    var current = size.options[size.selectedIndex];
    if (!keepSelection || !current || current.parentNode.disabled) {
      size.value = service.options[service.selectedIndex].getAttribute("data-default-size");
    }
  }
  service.addEventListener("change", function () { showSizesOf(service.value, false); });
  showSizesOf(service.value, true);
})();
</script>"""


def render_options_form(catalog: Catalog) -> str:
    """A service select and a size select, each labelled, with the default pre-selected."""
    default = catalog.services[catalog.default_service]
    service_options, size_groups, descriptions = [], [], []
    for service in catalog.services.values():
        selected = " selected" if service is default else ""
        default_value = escape(f"{service.name}/{service.default_size}")
        service_options.append(
            f'<option value="{escape(service.name)}" data-default-size="{default_value}"{selected}>'
            f"{escape(service.display_name)}</option>"
        )
        if service.description:
            descriptions.append(
                f"<li><strong>{escape(service.display_name)}</strong>: {escape(service.description)}</li>"
            )
        sizes = []
        for size_name, size in service.sizes.items():
            chosen = " selected" if service is default and size_name == service.default_size else ""
            sizes.append(
                f'<option value="{escape(service.name)}/{escape(size_name)}"{chosen}>{escape(size.label)}</option>'
            )
        size_groups.append(
            f'<optgroup label="{escape(service.display_name)}" data-service="{escape(service.name)}">'
            + "".join(sizes)
            + "</optgroup>"
        )
    return "\n".join(
        [
            '<div class="calliope-options">',
            '<div class="form-group mb-3">',
            f'<label for="{SERVICE_FIELD_ID}" class="form-label">Service</label>',
            f'<select id="{SERVICE_FIELD_ID}" name="service" class="form-select form-control" '
            f'aria-describedby="{SERVICE_FIELD_ID}-help">',
            *service_options,
            "</select>",
            f'<ul id="{SERVICE_FIELD_ID}-help" class="form-text">{"".join(descriptions)}</ul>',
            "</div>",
            '<div class="form-group mb-3">',
            f'<label for="{SIZE_FIELD_ID}" class="form-label">Size</label>',
            f'<select id="{SIZE_FIELD_ID}" name="size" class="form-select form-control">',
            *size_groups,
            "</select>",
            "</div>",
            "</div>",
            _SCRIPT,
        ]
    )


def options_from_form(formdata: dict[str, list[str]]) -> dict[str, str]:
    """The form's fields as user_options.

    Fields other than service and size are kept, so that Catalog.choose refuses them by name
    rather than silently ignoring a crafted post; only "_"-prefixed form plumbing is dropped.
    """
    options: dict[str, str] = {}
    for key, values in formdata.items():
        if key.startswith("_"):
            continue
        if len(values) != 1:
            raise CatalogError(f"form field {key!r} must have exactly one value, got {len(values)}")
        value = values[0]
        options[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    size = options.get("size", "")
    if "/" in size:
        size_service, options["size"] = size.split("/", 1)
        service = options.setdefault("service", size_service)
        if service != size_service:
            raise CatalogError(
                f"the size {size!r} belongs to service {size_service!r}, "
                f"but service {service!r} was chosen; pick one of its sizes"
            )
    return options
