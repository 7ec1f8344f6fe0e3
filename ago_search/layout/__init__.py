"""Layouts (ALT): a layout per group, its index maps, and operators' PrimFuncs in a layout.

- `layouts`: `Layout` (NCHW, NHWC, NCHW{x}c), `parse_layout`, `vector_lanes` (x from the
  target's vector width), `layout_choices`, the maps and their numpy twins.
- `primfunc`: `transform_primfunc`, one operator's PrimFunc storing its tensors in a layout and
  iterating in the stored order.

Where the transforms between groups go and how inverse ones cancel is `ago_search.plan.apply`'s
part (it owns the module the groups are cut from).
"""

from ago_search.layout.layouts import (
    DEFAULT_LAYOUT,
    Layout,
    LayoutError,
    image_nodes,
    index_map,
    layout_choices,
    parse_layout,
    stored_shape,
    to_stored,
    touches_activation,
    vector_lanes,
)
from ago_search.layout.primfunc import ACT, WEIGHT, transform_primfunc

__all__ = [
    "ACT",
    "DEFAULT_LAYOUT",
    "WEIGHT",
    "Layout",
    "LayoutError",
    "image_nodes",
    "index_map",
    "layout_choices",
    "parse_layout",
    "stored_shape",
    "to_stored",
    "touches_activation",
    "transform_primfunc",
    "vector_lanes",
]
