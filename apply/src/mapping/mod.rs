//! The mapping: how a legacy table and a platform table correspond, as configuration.
//!
//! apply keeps the two databases equal through a MAPPING read at start from
//! every `*.toml` file of a directory (`schemas/mapping/`, files in name
//! order; [`Mapping::load_dir`]). Nothing in the bridge names the reference
//! tables: they are one such file, `schemas/mapping/reference.toml`.
//!
//! # The file
//!
//! ```toml
//! [sides.legacy]
//! source = "legacy"            # ChangeEvent::source of this side's events
//! timestamps = "seconds"       # or "microseconds": the precision written to this side
//! [sides.platform]
//! source = "platform"
//! timestamps = "microseconds"
//!
//! [conflicts]
//! tie_winner = "legacy"        # equal updated_at (in seconds): this side wins
//! tombstone_retention = "7d"   # humantime duration
//!
//! [[entity]]                   # parents first: the order rows are visited in
//! name = "user"
//! legacy = { table = "public.users", key = "id", updated_at = "updated_at" }
//! platform = { table = "identity.identities", key = "id", updated_at = "updated_at" }
//! natural_key = { legacy = "email", platform = "email" }   # optional
//!
//!   [[entity.field]]
//!   kind = "copy"
//!   legacy = "email"
//!   platform = "email"
//! ```
//!
//! `[sides]` and `[conflicts]` appear once across all files. Unknown keys are
//! errors. The key and `updated_at` are not fields: the engine maps the key
//! through the id correspondence, and [`to_target`] converts `updated_at` like
//! a `timestamp` field, after the fields.
//!
//! # Field kinds
//!
//! | kind | example | legacy -> platform / platform -> legacy |
//! |---|---|---|
//! | `copy` | `legacy = "phone"`, `platform = "phone_e164"` | the value as is, both ways |
//! | `timestamp` | `legacy = "inserted_at"`, `platform = "created_at"` | naive UTC `Timestamp` <-> `TimestampTz`, truncated to the target side's precision |
//! | `split` | `legacy = "full_name"`, `platform = ["given_name", "family_name"]`, `separator = " "` | split at the FIRST separator (none: second part `""`) / join with one separator (second part `""`: the first alone) |
//! | `value_map` | `legacy = ["role"]`, `platform = ["kind", "is_admin"]`, `pairs = [{ legacy = ["admin"], platform = ["staff", true] }]`, `platform_only = [{ platform = ["member", true], legacy = ["admin"] }]` | exact tuples both ways; `platform_only` platform -> legacy only; all NULL <-> all NULL; no match: error |
//! | `lookup` | `legacy = "category_id"`, `platform = "category"`, `table = "public.categories"`, `key = "id"`, `value = "name"`, `create_missing = true`, `stamp = ["inserted_at", "updated_at"]` | [`TargetValue::LookupByKey`] / [`TargetValue::LookupByValue`], resolved by the engine on the legacy side; NULL <-> NULL |
//! | `flag_timestamp` | `legacy = "archived"`, `platform = "archived_at"` | false -> NULL, true -> [`TargetValue::KeepExistingOr`] the row's `updated_at` / NULL -> false, not NULL -> true |
//! | `json_fields` | `legacy = ["latitude", "longitude"]`, `platform = "center"`, `fields = ["lat", "lng"]` | floats -> `{"lat":..,"lng":..}` / the named numbers of the object (missing or not a number: error) |
//! | `reference` | `legacy = "team_id"`, `platform = "group_id"`, `entity = "team"` | [`TargetValue::Reference`]: the engine translates the id; NULL <-> NULL |
//!
//! An unchanged TOAST value ([`schemas::event::Value::Unchanged`]) in any
//! source column of a field makes all of that field's target columns
//! [`TargetValue::Unchanged`]: the target keeps its value, never a
//! placeholder or NULL.
//!
//! Timestamps written to a `seconds` side are TRUNCATED (floored) to whole
//! seconds, never rounded: letting a `timestamp(0)` column round would move
//! a row's `updated_at` up to half a second into the future, and the row
//! would win conflicts it should lose.
//!
//! # Lossy cases
//!
//! Every row round-trips (legacy -> platform -> legacy, and platform ->
//! legacy -> platform) except these, each tested on its own:
//!
//! 1. `value_map` `platform_only`: platform `(kind = "member", is_admin = true)`
//!    becomes legacy `admin`, which comes back as `(staff, true)`.
//! 2. Platform timestamps with a fraction of a second are truncated to whole
//!    seconds on the legacy side (`created_at`, `updated_at`, and so the
//!    `archived_at` of a new platform row).
//! 3. `split`: a platform `given_name` that contains the separator: given
//!    `"Mary Ann"`, family `""` -> `"Mary Ann"` -> given `"Mary"`, family
//!    `"Ann"`. Likewise a legacy `full_name` whose only separator is its last
//!    character: `"Mary "` -> (`"Mary"`, `""`) -> `"Mary"`.
//! 4. `flag_timestamp`: the legacy side keeps only the flag. A platform
//!    `archived_at` survives the way back because the existing value is kept
//!    ([`TargetValue::KeepExistingOr`]); a row that is new on the platform
//!    side gets the row's `updated_at` instead.
//! 5. `json_fields`: the platform JSON is rewritten in one canonical form
//!    (`{"lat":1.5,"lng":-0.25}`, the configured field order, no spaces);
//!    other members of the object are not kept. Numbers are exact both ways.
//! 6. `lookup` and `reference` values are placeholders here
//!    ([`TargetValue::LookupByKey`], [`TargetValue::LookupByValue`],
//!    [`TargetValue::Reference`]); the engine resolves them with database
//!    access, so they round-trip only through it.
//!
//! # Errors
//!
//! Loading ([`Mapping::from_str`], [`Mapping::load_dir`]) and checking against
//! a database ([`Mapping::check`] with a [`Catalog`]) name the file, the line
//! and the place, one problem per line:
//!
//! ```text
//! schemas/mapping/reference.toml:80: entity "team" field 2: unknown kind "lookpu" (expected one of: ...)
//! schemas/mapping/reference.toml:62: entity "user" field 4 (copy): column "phone_e164x" does not exist in identity.identities (platform)
//! ```
//!
//! Fields are counted from 1 within their entity. Row conversion errors
//! ([`ConvertError`]) name the entity, the field and the column, never a value.

mod catalog;
mod convert;
mod error;
mod load;
mod model;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use catalog::{Catalog, Catalogs};
pub use convert::{to_target, ConvertError, ConvertProblem, Row, TargetRow, TargetValue};
pub use error::{Located, MappingError};
pub use model::{
    Conflicts, Entity, Field, FieldDef, Lookup, Mapping, NaturalKey, Side, SideConfig, TableName,
    TableRef, TimestampPrecision, ValueMap, ValuePair,
};
