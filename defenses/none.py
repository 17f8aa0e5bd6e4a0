"""``none``: the undefended service (the baseline every defense is compared with)."""

from __future__ import annotations

from psml_bench import Defense, register_defense


@register_defense("none")
class NoDefense(Defense):
    """Leaves specs and answers unchanged."""
