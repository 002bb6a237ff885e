"""Column-chunk passthrough: rewrite a Parquet file with some top-level columns replaced or added, copying
every other column chunk as bytes and proving the copies by digest. The output's layout and the rules for
its footer are in fieldcrypt/format/splice/splice.py's docstring; what is refused, in footer.py's."""

from fieldcrypt.errors import SpliceUnsupported
from fieldcrypt.format.splice.arrow_schema import arrow_schema_metadata, footer_metadata, spliced_arrow_schema
from fieldcrypt.format.splice.proof import prove_copied, range_digest
from fieldcrypt.format.splice.splice import CopiedRange, SpliceReport, splice_columns

__all__ = [
    "CopiedRange",
    "SpliceReport",
    "SpliceUnsupported",
    "arrow_schema_metadata",
    "footer_metadata",
    "prove_copied",
    "range_digest",
    "splice_columns",
    "spliced_arrow_schema",
]
