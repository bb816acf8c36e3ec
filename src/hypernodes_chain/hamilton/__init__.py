"""Apache Hamilton dataflows as graphs: `from_modules`, `load_dataflow`.

Hamilton's own resolver (``hamilton.graph.create_function_graph``) turns the modules'
functions into Hamilton nodes, so every function modifier (``@parameterize``,
``@extract_columns``, ``@config.when``, ``@check_output``, ``@pipe_input``, ``@subdag``, ...)
behaves exactly as in Hamilton. Each resolved node then becomes one `HamiltonNode`, which
calls Hamilton's callable with keyword arguments as Hamilton's executor does; a node whose
callable is the user's plain function calls that function directly (the fast path of ``map``).

- Hamilton's external nodes become graph inputs (optional where every reader has a default);
  config values become `ConfigNode` constants.
- ``Parallelizable[T]`` / ``Collect[T]``: the nodes between the producer and the collector
  form a nested graph mapped over the produced items (`Graph.as_node(map_over=...)`), at any
  depth of nesting (Hamilton runs one level).

Hamilton is imported on first use only, so ``import hypernodes_chain`` never imports it.
"""

from ._convert import from_modules
from ._load import is_dataflow, load_dataflow, parse_config
from ._nodes import ConfigNode, HamiltonNode, NodeSpec

__all__ = [
    "ConfigNode",
    "HamiltonNode",
    "NodeSpec",
    "from_modules",
    "is_dataflow",
    "load_dataflow",
    "parse_config",
]
