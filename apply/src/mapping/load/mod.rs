//! Reading mapping files: TOML with spans, then structural validation.
//!
//! One module per stage: `raw` (the file as serde sees it), `build` (its
//! sections and fields checked and built, every problem with its line) and
//! `kinds` (the field kinds that take more than columns). This module
//! parses each file and merges the files' parts into one [`Mapping`],
//! checking what spans files.

mod build;
mod kinds;
mod raw;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use super::error::{at_line, MappingError, Source};
use super::model::{Conflicts, Entity, Field, Mapping, Side, SideConfig};
use build::{Builder, FilePart};
use raw::{context_at, kind_keys, RawFile};

fn parse_file(text: &str, file: &str) -> Result<FilePart, MappingError> {
    let src = Source::new(file, text);
    let raw: RawFile = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let offset = e.span().map_or(0, |s| s.start);
            let mut message = e.message().trim().replace('\n', "; ");
            let (context, kind) = context_at(text, offset);
            // serde lists every key of every kind: name only this kind's.
            let field_key = message.contains("`, expected one of `kind`, ");
            if let (Some(kind), Some(rest), true) =
                (kind, message.strip_prefix("unknown field `"), field_key)
            {
                if let Some((key, _)) = rest.split_once('`') {
                    message = format!(
                        "unknown key `{key}` (kind \"{kind}\" takes: kind, {})",
                        kind_keys(kind).join(", ")
                    );
                }
            }
            return Err(src.error(offset, context, message));
        }
    };
    let mut b = Builder {
        src,
        file: Arc::from(file),
        errors: Vec::new(),
    };
    let mut sides = [None, None];
    if let Some(raw_sides) = &raw.sides {
        if let Some(s) = &raw_sides.legacy {
            sides[0] = b.side("legacy", s);
        }
        if let Some(s) = &raw_sides.platform {
            sides[1] = b.side("platform", s);
        }
    }
    let conflicts = raw.conflicts.as_ref().and_then(|c| b.conflicts(c));
    let entities: Vec<Entity> = raw
        .entity
        .iter()
        .enumerate()
        .filter_map(|(i, e)| b.entity(i + 1, e))
        .collect();
    MappingError::from_list(b.errors)?;
    Ok(FilePart {
        file: b.file,
        sides,
        conflicts,
        entities,
    })
}

/// Joins the files' parts; checks what spans files (duplicates, references, sections).
fn merge(place: &str, parts: Vec<FilePart>) -> Result<Mapping, MappingError> {
    let mut errors = Vec::new();
    let mut sides: [Option<(SideConfig, Arc<str>, usize)>; 2] = [None, None];
    let mut conflicts: Option<(Conflicts, Arc<str>, usize)> = None;
    let mut entities: Vec<Entity> = Vec::new();
    let mut files = Vec::new();
    for part in parts {
        files.push(part.file.clone());
        for (slot, (side, defined)) in sides.iter_mut().zip(Side::BOTH.into_iter().zip(part.sides))
        {
            let Some((config, line)) = defined else {
                continue;
            };
            if let Some((_, file, first)) = slot {
                errors.push(at_line(
                    &part.file,
                    line,
                    format!("sides.{side}"),
                    format!("already defined at {file}:{first}"),
                ));
            } else {
                *slot = Some((config, part.file.clone(), line));
            }
        }
        if let Some((c, line)) = part.conflicts {
            if let Some((_, file, first)) = &conflicts {
                errors.push(at_line(
                    &part.file,
                    line,
                    "conflicts",
                    format!("already defined at {file}:{first}"),
                ));
            } else {
                conflicts = Some((c, part.file.clone(), line));
            }
        }
        for entity in part.entities {
            if let Some(first) = entities.iter().find(|e| e.name == entity.name) {
                errors.push(at_line(
                    &entity.file,
                    entity.line,
                    format!("entity \"{}\"", entity.name),
                    format!("already defined at {}:{}", first.file, first.line),
                ));
                continue;
            }
            for side in Side::BOTH {
                let t = entity.table(side);
                if let Some(first) = entities
                    .iter()
                    .find(|e| e.table(side).schema == t.schema && e.table(side).table == t.table)
                {
                    errors.push(at_line(
                        &entity.file,
                        entity.table_line(side),
                        format!("entity \"{}\"", entity.name),
                        format!(
                            "{side} table {} is already mapped by entity \"{}\"",
                            t.qualified(),
                            first.name
                        ),
                    ));
                }
            }
            entities.push(entity);
        }
    }
    for entity in &entities {
        for f in entity.fields() {
            if let Field::Reference { entity: target, .. } = f.field() {
                if !entities.iter().any(|e| &e.name == target) {
                    errors.push(at_line(
                        &entity.file,
                        f.line_of("entity"),
                        format!("entity \"{}\" {}", entity.name, f.label()),
                        format!("entity \"{target}\" is not defined"),
                    ));
                }
            }
        }
    }
    let [legacy, platform] = sides;
    for (side, defined) in [("legacy", &legacy), ("platform", &platform)] {
        if defined.is_none() {
            errors.push(MappingError::General {
                place: place.to_owned(),
                message: format!("no [sides.{side}] section"),
            });
        }
    }
    if conflicts.is_none() {
        errors.push(MappingError::General {
            place: place.to_owned(),
            message: "no [conflicts] section".to_owned(),
        });
    }
    if entities.is_empty() {
        errors.push(MappingError::General {
            place: place.to_owned(),
            message: "no [[entity]] defined".to_owned(),
        });
    }
    if let (Some((l, _, _)), Some((p, file, line))) = (&legacy, &platform) {
        if l.source == p.source {
            errors.push(at_line(
                file,
                *line,
                "sides.platform",
                format!("source \"{}\" is also the legacy side's source", p.source),
            ));
        }
    }
    MappingError::from_list(errors)?;
    let (Some((legacy, _, _)), Some((platform, _, _)), Some((conflicts, _, _))) =
        (legacy, platform, conflicts)
    else {
        // Unreachable: each missing section pushed an error above.
        return Err(MappingError::General {
            place: place.to_owned(),
            message: "incomplete mapping".to_owned(),
        });
    };
    let precision = [legacy.timestamps, platform.timestamps];
    for entity in &mut entities {
        entity.precision = precision;
    }
    Ok(Mapping {
        sides: [legacy, platform],
        conflicts,
        entities,
        files,
    })
}

impl Mapping {
    /// Loads one mapping file's text; `file_name` is what error messages call it.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str, file_name: &str) -> Result<Mapping, MappingError> {
        let part = parse_file(text, file_name)?;
        merge(file_name, vec![part])
    }

    /// Loads every `*.toml` file of `dir`, in file name order, as one mapping:
    /// entities in file order, `[sides]` and `[conflicts]` defined once in all.
    pub fn load_dir(dir: &Path) -> Result<Mapping, MappingError> {
        let io = |source: std::io::Error| MappingError::Io {
            path: dir.display().to_string(),
            source,
        };
        let mut paths = Vec::new();
        for entry in fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        if paths.is_empty() {
            return Err(MappingError::General {
                place: dir.display().to_string(),
                message: "no *.toml mapping file".to_owned(),
            });
        }
        let mut parts = Vec::new();
        let mut errors = Vec::new();
        for path in paths {
            let name = path.display().to_string();
            match fs::read_to_string(&path) {
                Ok(text) => match parse_file(&text, &name) {
                    Ok(part) => parts.push(part),
                    Err(e) => errors.push(e),
                },
                Err(source) => errors.push(MappingError::Io { path: name, source }),
            }
        }
        MappingError::from_list(errors)?;
        merge(&dir.display().to_string(), parts)
    }
}
