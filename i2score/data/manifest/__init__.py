"""Input manifests: the language of a row (:mod:`.schema`), reading (:mod:`.read`), the rows of a
folder or glob of images (:mod:`.discover`), validation against the op catalog (:mod:`.validate`),
loading a row's files (:mod:`.load`) and the JSON Schema of a row (:mod:`.jsonschema`)."""

from i2score.data.manifest.discover import Discovery, DiscoveryError, discover, is_manifest_source
from i2score.data.manifest.jsonschema import row_json_schema
from i2score.data.manifest.load import LoadedRow, load_row
from i2score.data.manifest.read import Manifest, absolute_url, read_manifest, read_manifest_bytes
from i2score.data.manifest.schema import (
    ERRORS_SCHEMA,
    KNOWN_COLUMNS,
    REASON_DESCRIPTIONS,
    SUPPORTED_SCHEMES,
    GeneratorBound,
    GeneratorLimits,
    ManifestError,
    ManifestKind,
    ManifestRow,
    OpCatalog,
    OpSchema,
    Param,
    Reason,
    Rejection,
    RowError,
    Use,
    ValidationResult,
    check_id,
    rejections_to_arrow,
    write_rejections,
)
from i2score.data.manifest.validate import validate_manifest

__all__ = [
    "Discovery",
    "DiscoveryError",
    "ERRORS_SCHEMA",
    "KNOWN_COLUMNS",
    "REASON_DESCRIPTIONS",
    "SUPPORTED_SCHEMES",
    "GeneratorBound",
    "GeneratorLimits",
    "LoadedRow",
    "Manifest",
    "ManifestError",
    "ManifestKind",
    "ManifestRow",
    "OpCatalog",
    "OpSchema",
    "Param",
    "Reason",
    "Rejection",
    "RowError",
    "Use",
    "ValidationResult",
    "absolute_url",
    "check_id",
    "discover",
    "is_manifest_source",
    "load_row",
    "read_manifest",
    "read_manifest_bytes",
    "rejections_to_arrow",
    "write_rejections",
    "row_json_schema",
    "validate_manifest",
]
