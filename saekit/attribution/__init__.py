"""Attribution of a next-token logit to the features of spliced dictionaries, checked against
ablations (docs/attribution.md)."""

from saekit.attribution.attribute import Metric, attribute, attribute_splice, attribute_splices
from saekit.attribution.config import AttributeConfig, ValidateConfig
from saekit.attribution.splice import Splice, load_splices
from saekit.attribution.validate import validate_attribution

__all__ = [
    "AttributeConfig",
    "Metric",
    "Splice",
    "ValidateConfig",
    "attribute",
    "attribute_splice",
    "attribute_splices",
    "load_splices",
    "validate_attribution",
]
