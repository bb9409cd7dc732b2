//! `taskgate new plugin NAME`: writes a plugin crate that builds on its own, against exactly
//! the plugin API of this host. The templates are files of the repository
//! (`host/templates/plugin/`), embedded in the binary.
//!
//! Where the API comes from is the one thing the crate cannot guess: by default the
//! checkout this binary was built from (a `path` dependency: the very source of this host's
//! API), or a git repository at the tag of this API version (`plugin-api-v<version>`). Either
//! way the dependency says `version = "=<API_VERSION>"`, so Cargo refuses any other API. The
//! crate's Cargo.lock is this workspace's own: the plugin resolves abi_stable, serde and
//! schemars to the versions the host was built with (Cargo drops what the plugin does not use).

use std::path::{Path, PathBuf};

use taskgate_plugin_api::API_VERSION;

/// The checkout this binary was built from: its plugin API, if it is still there.
const BUILT_FROM_API: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-api");

/// The files of a new plugin crate: (path in the crate, template).
const TEMPLATES: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../templates/plugin/Cargo.toml.template"),
    ),
    (
        "src/lib.rs",
        include_str!("../templates/plugin/src/lib.rs.template"),
    ),
    (
        "README.md",
        include_str!("../templates/plugin/README.md.template"),
    ),
    (
        ".gitignore",
        include_str!("../templates/plugin/gitignore.template"),
    ),
    ("Cargo.lock", include_str!("../../Cargo.lock")),
];

/// Where the new crate gets `taskgate-plugin-api` from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiSource {
    /// A directory holding the API crate (a checkout's `plugin-api`).
    Path(PathBuf),
    /// A git repository of taskgate; the crate depends on tag `plugin-api-v<API_VERSION>`.
    Git(String),
}

impl ApiSource {
    /// The checkout this binary was built from, when its plugin API is still on disk.
    pub fn built_from() -> Option<ApiSource> {
        let dir = Path::new(BUILT_FROM_API);
        dir.join("Cargo.toml")
            .is_file()
            .then(|| dir.canonicalize().ok())
            .flatten()
            .map(ApiSource::Path)
    }

    /// The dependency line of the new crate's Cargo.toml.
    pub fn dependency_line(&self) -> String {
        let quoted = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let version = quoted(&format!("={API_VERSION}"));
        match self {
            ApiSource::Path(dir) => format!(
                "taskgate-plugin-api = {{ path = {}, version = {version} }}",
                quoted(&dir.to_string_lossy())
            ),
            ApiSource::Git(url) => format!(
                "taskgate-plugin-api = {{ git = {}, tag = {}, version = {version} }}",
                quoted(url),
                quoted(&git_tag())
            ),
        }
    }
}

/// The git tag of this plugin API version.
pub fn git_tag() -> String {
    format!("plugin-api-v{API_VERSION}")
}

/// Why no crate was written. Nothing is left on disk in any case.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("invalid plugin name `{0}`: use 1 to 64 lowercase letters, digits, `-` and `_`, starting with a letter (it names the crate, the library and the request type)")]
    InvalidName(String),
    #[error("{0} already exists: choose another name or --dir")]
    Exists(PathBuf),
    #[error("cannot find the plugin API this host was built with (the checkout is gone): pass --api-git URL (a taskgate repository with tag {tag}) or --api-path DIR (its plugin-api directory)", tag = git_tag())]
    NoApiSource,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What `taskgate new plugin` was asked for.
#[derive(Debug, Clone)]
pub struct NewPlugin {
    pub name: String,
    /// Default: `./<name>`.
    pub dir: Option<PathBuf>,
    pub api: Option<ApiSource>,
}

/// What was written, for the command's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub dir: PathBuf,
    pub request_type: String,
    pub library: String,
}

/// Checks a plugin name: it becomes part of a crate name, a library file name, a request type
/// and a plugins.toml table, so it is kept to what all of them accept as is.
pub fn check_name(name: &str) -> Result<(), ScaffoldError> {
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if starts_with_letter && rest_ok && name.len() <= 64 {
        Ok(())
    } else {
        Err(ScaffoldError::InvalidName(name.to_owned()))
    }
}

/// Writes the crate. The name is checked and the directory must not exist before anything is
/// written; a failure half-way removes what was written.
pub fn new_plugin(request: &NewPlugin) -> Result<Written, ScaffoldError> {
    check_name(&request.name)?;
    let name = request.name.as_str();
    let dir = request.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir));
    }
    let api = match &request.api {
        Some(api) => api.clone(),
        None => ApiSource::built_from().ok_or(ScaffoldError::NoApiSource)?,
    };
    let crate_name = format!("taskgate-plugin-{name}");
    let lib = crate_name.replace('-', "_");
    let request_type = format!("{name}.count");
    let api_compatible = crate::cli::compatible_api_versions(API_VERSION);
    let dependency = api.dependency_line();
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{crate}}", &crate_name)
            .replace("{{lib}}", &lib)
            .replace("{{request_type}}", &request_type)
            .replace("{{api_version}}", API_VERSION)
            .replace("{{api_compatible}}", &api_compatible)
            .replace("{{api_dependency}}", &dependency)
    };
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ScaffoldError::Io { path, source }
    };
    // `create_dir` (not `create_dir_all`) for the crate itself: it fails if the directory
    // appeared since the check above, so nobody's files are ever overwritten.
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::create_dir(&dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => ScaffoldError::Exists(dir.clone()),
        _ => io(&dir)(e),
    })?;
    let written = TEMPLATES.iter().try_for_each(|(file, template)| {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, fill(template)).map_err(io(&path))
    });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    Ok(Written {
        dir,
        request_type,
        library: format!("lib{lib}.{}", std::env::consts::DLL_EXTENSION),
    })
}

/// What the command prints after writing the crate: the next steps.
pub fn next_steps(written: &Written, name: &str) -> String {
    let dir = written.dir.display();
    format!(
        "wrote plugin `{name}` (request type `{rt}`, plugin API {API_VERSION}) in {dir}\n\
         next:\n  \
         cd {dir} && cargo test && cargo build --release\n  \
         cp ${{CARGO_TARGET_DIR:-target}}/release/{lib} <the host's plugins directory>\n  \
         enable it in plugins.toml: [plugins.{name}] enabled = true\n  \
         a worker consumes queue `taskgate.{rt}`\n",
        rt = written.request_type,
        lib = written.library,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> PathBuf {
        std::env::temp_dir().join(format!("taskgate-scaffold-{}", uuid::Uuid::new_v4()))
    }

    #[test]
    fn names_are_checked_before_anything_is_written() {
        for bad in [
            "",
            "Math",
            "1math",
            "math.primes",
            "../x",
            "a b",
            "é",
            &"a".repeat(65),
        ] {
            let dir = temp();
            let error = new_plugin(&NewPlugin {
                name: bad.to_owned(),
                dir: Some(dir.clone()),
                api: Some(ApiSource::Git("https://example.com/taskgate.git".into())),
            })
            .unwrap_err();
            assert!(
                matches!(error, ScaffoldError::InvalidName(_)),
                "{bad}: {error}"
            );
            assert!(error.to_string().contains("lowercase letters"), "{error}");
            assert!(!dir.exists(), "{bad}: nothing written");
        }
        for good in ["math", "math-tools", "m2_x"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn an_existing_directory_is_refused_and_left_alone() {
        let dir = temp();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mine.txt"), "keep").unwrap();
        let error = new_plugin(&NewPlugin {
            name: "math".into(),
            dir: Some(dir.clone()),
            api: Some(ApiSource::Git("https://example.com/taskgate.git".into())),
        })
        .unwrap_err();
        assert!(matches!(error, ScaffoldError::Exists(_)), "{error}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_crate_pins_this_hosts_plugin_api_and_fills_every_placeholder() {
        let dir = temp().join("nested/math");
        let written = new_plugin(&NewPlugin {
            name: "math".into(),
            dir: Some(dir.clone()),
            api: Some(ApiSource::Git("https://example.com/taskgate.git".into())),
        })
        .unwrap();
        assert_eq!(written.request_type, "math.count");
        assert!(written.library.starts_with("libtaskgate_plugin_math."));
        for (file, _) in TEMPLATES {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            assert!(!text.contains("{{"), "{file} has an unfilled placeholder");
        }
        let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let manifest: toml::Value = toml::from_str(&cargo).unwrap();
        let api = &manifest["dependencies"]["taskgate-plugin-api"];
        assert_eq!(
            api["version"].as_str(),
            Some(format!("={API_VERSION}").as_str())
        );
        assert_eq!(api["tag"].as_str(), Some(git_tag().as_str()));
        assert!(
            manifest.get("workspace").is_some(),
            "a workspace of its own"
        );
        assert_eq!(
            manifest["package"]["name"].as_str(),
            Some("taskgate-plugin-math")
        );
        let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
        assert!(lib.contains(r#"Plugin::new("math""#) && lib.contains(r#""math.count""#));
        let lock = std::fs::read_to_string(dir.join("Cargo.lock")).unwrap();
        assert!(
            lock.contains("name = \"abi_stable\""),
            "the host's resolved versions"
        );
        std::fs::remove_dir_all(dir.parent().unwrap().parent().unwrap()).unwrap();
    }

    #[test]
    fn the_default_api_source_is_this_checkout_by_path() {
        let Some(ApiSource::Path(dir)) = ApiSource::built_from() else {
            panic!("the checkout this test runs in has plugin-api");
        };
        assert!(dir.is_absolute() && dir.ends_with("plugin-api"));
        let line = ApiSource::Path(PathBuf::from("/a \"b\"/plugin-api")).dependency_line();
        let parsed: toml::Table = toml::from_str(&line).unwrap();
        assert_eq!(
            parsed["taskgate-plugin-api"]["path"].as_str(),
            Some("/a \"b\"/plugin-api")
        );
    }
}
