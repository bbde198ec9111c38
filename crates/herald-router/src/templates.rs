//! Templates rendered with minijinja (Jinja syntax: `{{ name }}`,
//! `{% if %}`, `{% for %}`, filters such as `{{ name | upper }}`), escaped
//! by output context, with locale fallback.
//!
//! Escaping follows where the text goes, so event data can never become
//! markup or structure: the email `html` part is HTML-escaped; a webhook
//! `body` is JSON, and each value is written as a JSON value (a string
//! variable comes out quoted: write `{"order": {{ order }}}`), and the
//! rendered body must parse as JSON; push titles and bodies, SMS, email
//! subjects and text parts are plain text, as given. `| safe` opts a value
//! out, for a template author who knows it is markup.
//!
//! Lookup order for a locale: the event's locale (`de-AT`), its language
//! (`de`), the user's preferred locale and its language, then the template's
//! default locale. A variable the template uses but the event does not give
//! is an error, never an empty string in a customer's inbox. Templates are
//! compiled when loaded: a syntax error stops the router at start-up with
//! the template, locale and field named.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use herald_model::wire::RenderedContent;
use herald_model::Channel;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use serde::Deserialize;

/// One template's text for one locale; fields not used by a channel stay empty.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LocalizedTemplate {
    /// Push title.
    pub title: String,
    /// Email subject.
    pub subject: String,
    /// Text body (push, SMS, email text part); the JSON payload for webhooks.
    pub body: String,
    /// Email HTML part.
    pub html: String,
}

/// A template: texts by locale and the locale to fall back to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Locale used when no other matches.
    pub default_locale: String,
    /// Texts by BCP 47 locale.
    pub locales: BTreeMap<String, LocalizedTemplate>,
}

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// No template with that id.
    #[error("unknown template `{id}`")]
    UnknownTemplate {
        /// Template id.
        id: String,
    },
    /// No locale matched, not even the default.
    #[error("template `{id}` has no text for any fallback locale")]
    NoLocale {
        /// Template id.
        id: String,
    },
    /// A variable is used but not given.
    #[error("template `{id}` needs variable `{name}`")]
    MissingVariable {
        /// Template id.
        id: String,
        /// Variable name.
        name: String,
    },
    /// The template failed while rendering (a filter given the wrong
    /// kind of value, say), or a webhook body is not JSON once rendered.
    #[error("template `{id}` could not be rendered: {detail}")]
    Failed {
        /// Template id.
        id: String,
        /// What went wrong (the template's own text, never a variable's value).
        detail: String,
    },
}

impl RenderError {
    /// Fixed reason label.
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::UnknownTemplate { .. } => "unknown_template",
            Self::NoLocale { .. } => "template_locale_missing",
            Self::MissingVariable { .. } => "template_variable_missing",
            Self::Failed { .. } => "template_failed",
        }
    }
}

/// A template that does not compile.
#[derive(Debug, Clone, thiserror::Error)]
#[error("template `{id}`, locale `{locale}`, field `{field}`: {detail}")]
pub struct CompileError {
    id: String,
    locale: String,
    field: &'static str,
    detail: String,
}

/// The output context of one rendered field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    Text,
    Html,
    Json,
}

impl Context {
    const fn suffix(self) -> &'static str {
        match self {
            Self::Text => "txt",
            Self::Html => "html",
            Self::Json => "json",
        }
    }
}

/// The fields of a localized template and the contexts each is compiled in.
const FIELDS: &[(&str, &[Context])] = &[
    ("title", &[Context::Text]),
    ("subject", &[Context::Text]),
    ("body", &[Context::Text, Context::Json]),
    ("html", &[Context::Html]),
];

/// A compiled template's name: id, locale, field and context, separated by
/// a character no id or locale is written with.
fn name(id: &str, locale: &str, field: &str, context: Context) -> String {
    format!("{id}\u{1f}{locale}\u{1f}{field}.{}", context.suffix())
}

/// Every template, by id, compiled.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "HashMap<String, Template>")]
pub struct TemplateStore {
    templates: HashMap<String, Template>,
    env: Arc<Environment<'static>>,
}

impl TryFrom<HashMap<String, Template>> for TemplateStore {
    type Error = CompileError;

    fn try_from(templates: HashMap<String, Template>) -> Result<Self, CompileError> {
        Self::new(templates)
    }
}

fn fallbacks<'a>(
    event_locale: Option<&'a str>,
    user_locale: Option<&'a str>,
    default: &'a str,
) -> Vec<&'a str> {
    let mut out = Vec::with_capacity(5);
    for l in [event_locale, user_locale].into_iter().flatten() {
        out.push(l);
        if let Some((lang, _)) = l.split_once('-') {
            out.push(lang);
        }
    }
    out.push(default);
    out
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl TemplateStore {
    /// Compiles `templates` (by id); the first that does not compile is
    /// the error.
    pub fn new(templates: HashMap<String, Template>) -> Result<Self, CompileError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else if name.ends_with(".json") {
                AutoEscape::Json
            } else {
                AutoEscape::None
            }
        });
        for (id, t) in &templates {
            for (locale, text) in &t.locales {
                for (field, contexts) in FIELDS {
                    let source = match *field {
                        "title" => &text.title,
                        "subject" => &text.subject,
                        "body" => &text.body,
                        _ => &text.html,
                    };
                    if source.is_empty() {
                        continue;
                    }
                    for context in *contexts {
                        env.add_template_owned(name(id, locale, field, *context), source.clone())
                            .map_err(|e| CompileError {
                                id: id.clone(),
                                locale: locale.clone(),
                                field,
                                detail: e.to_string(),
                            })?;
                    }
                }
            }
        }
        Ok(Self {
            templates,
            env: Arc::new(env),
        })
    }

    /// Renders template `id` for `channel`.
    pub fn render(
        &self,
        id: &str,
        channel: Channel,
        event_locale: Option<&str>,
        user_locale: Option<&str>,
        vars: &BTreeMap<String, String>,
    ) -> Result<RenderedContent, RenderError> {
        let t = self
            .templates
            .get(id)
            .ok_or_else(|| RenderError::UnknownTemplate { id: id.to_string() })?;
        let locale = fallbacks(event_locale, user_locale, &t.default_locale)
            .into_iter()
            .find(|l| t.locales.contains_key(*l))
            .ok_or_else(|| RenderError::NoLocale { id: id.to_string() })?;
        let field = |field: &str, context: Context| self.field(id, locale, field, context, vars);
        Ok(match channel {
            Channel::Push => RenderedContent {
                title: opt(field("title", Context::Text)?),
                body: field("body", Context::Text)?,
                ..Default::default()
            },
            Channel::Sms => RenderedContent {
                body: field("body", Context::Text)?,
                ..Default::default()
            },
            Channel::Webhook => {
                let body = field("body", Context::Json)?;
                if !body.is_empty() {
                    serde_json::from_str::<serde::de::IgnoredAny>(&body).map_err(|e| {
                        RenderError::Failed {
                            id: id.to_string(),
                            detail: format!("the webhook body is not JSON once rendered ({e})"),
                        }
                    })?;
                }
                RenderedContent {
                    body,
                    ..Default::default()
                }
            }
            Channel::Email => RenderedContent {
                subject: opt(field("subject", Context::Text)?),
                html: opt(field("html", Context::Html)?),
                body: field("body", Context::Text)?,
                ..Default::default()
            },
        })
    }

    /// One field in one context; empty when the locale does not have it.
    fn field(
        &self,
        id: &str,
        locale: &str,
        field: &str,
        context: Context,
        vars: &BTreeMap<String, String>,
    ) -> Result<String, RenderError> {
        let Ok(template) = self.env.get_template(&name(id, locale, field, context)) else {
            return Ok(String::new());
        };
        template.render(vars).map_err(|e| {
            if e.kind() == ErrorKind::UndefinedError {
                let mut missing: Vec<String> = template
                    .undeclared_variables(false)
                    .into_iter()
                    .filter(|v| !vars.contains_key(v))
                    .collect();
                missing.sort();
                if let Some(name) = missing.into_iter().next() {
                    return RenderError::MissingVariable {
                        id: id.to_string(),
                        name,
                    };
                }
            }
            RenderError::Failed {
                id: id.to_string(),
                detail: e.kind().to_string(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> TemplateStore {
        let toml = r#"
            [receipt]
            default_locale = "en"
            [receipt.locales.en]
            title = "Receipt"
            subject = "Your receipt for order {{order}}"
            body = "Thanks, {{ name }}! Order {{order}} is confirmed."
            [receipt.locales.de]
            subject = "Ihre Quittung für Bestellung {{order}}"
            body = "Danke, {{name}}!"
            [receipt.locales.de-CH]
            body = "Merci vielmal, {{name}}!"
        "#;
        toml::from_str(toml).expect("templates parse")
    }

    fn vars() -> BTreeMap<String, String> {
        [
            ("order".to_string(), "42".to_string()),
            ("name".to_string(), "Ada".to_string()),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn renders_with_locale_fallback() {
        let s = store();
        let r = s
            .render("receipt", Channel::Email, Some("en-GB"), None, &vars())
            .expect("render");
        assert_eq!(r.subject.as_deref(), Some("Your receipt for order 42"));
        assert_eq!(r.body, "Thanks, Ada! Order 42 is confirmed.");
        assert_eq!(r.html, None);
        assert_eq!(
            s.render("receipt", Channel::Sms, Some("de-CH"), None, &vars())
                .expect("r")
                .body,
            "Merci vielmal, Ada!"
        );
        assert_eq!(
            s.render("receipt", Channel::Sms, Some("de-AT"), None, &vars())
                .expect("r")
                .body,
            "Danke, Ada!"
        );
        assert_eq!(
            s.render("receipt", Channel::Sms, None, Some("de-DE"), &vars())
                .expect("r")
                .body,
            "Danke, Ada!"
        );
        assert_eq!(
            s.render("receipt", Channel::Sms, Some("fr"), None, &vars())
                .expect("r")
                .body,
            "Thanks, Ada! Order 42 is confirmed."
        );
        let push = s
            .render("receipt", Channel::Push, None, None, &vars())
            .expect("r");
        assert_eq!(push.title.as_deref(), Some("Receipt"));
    }

    #[test]
    fn missing_variables_and_templates_are_errors() {
        let s = store();
        let mut v = vars();
        v.remove("name");
        let err = s
            .render("receipt", Channel::Sms, None, None, &v)
            .unwrap_err();
        assert_eq!(
            err,
            RenderError::MissingVariable {
                id: "receipt".into(),
                name: "name".into()
            }
        );
        assert_eq!(err.reason(), "template_variable_missing");
        assert_eq!(
            s.render("nope", Channel::Sms, None, None, &v)
                .unwrap_err()
                .reason(),
            "unknown_template"
        );
        let bad = "[x]\ndefault_locale = \"en\"\n[x.locales.en]\nbody = \"a {{b\"\n";
        let err = toml::from_str::<TemplateStore>(bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("template `x`, locale `en`, field `body`"),
            "a template that does not compile is refused when loaded: {err}"
        );
    }

    fn one(locale_fields: &str) -> TemplateStore {
        toml::from_str(&format!(
            "[t]\ndefault_locale = \"en\"\n[t.locales.en]\n{locale_fields}"
        ))
        .expect("templates parse")
    }

    fn var(name: &str, value: &str) -> BTreeMap<String, String> {
        [(name.to_string(), value.to_string())]
            .into_iter()
            .collect()
    }

    #[test]
    fn event_data_cannot_become_markup_in_an_email() {
        let s = one(
            "subject = \"Hi {{ name }}\"\nbody = \"Hi {{ name }}\"\nhtml = \"<p>Hi {{ name }}</p>\"\n",
        );
        let attack = r#"<a href="https://evil.example">click</a>"#;
        let r = s
            .render("t", Channel::Email, None, None, &var("name", attack))
            .expect("render");
        let html = r.html.expect("html");
        assert!(!html.contains("<a "), "{html}");
        assert!(
            html.contains("&lt;a href=&quot;https:&#x2f;&#x2f;evil.example&quot;&gt;"),
            "{html}"
        );
        // Plain text parts are text: as given.
        assert_eq!(r.body, format!("Hi {attack}"));
        assert_eq!(r.subject.as_deref(), Some(format!("Hi {attack}").as_str()));
    }

    #[test]
    fn event_data_cannot_break_out_of_a_webhook_payload() {
        let s = one("body = '{\"name\": {{ name }}, \"plan\": \"gold\"}'\n");
        let attack = r#"x", "plan": "free"#;
        let r = s
            .render("t", Channel::Webhook, None, None, &var("name", attack))
            .expect("render");
        let payload: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
        assert_eq!(payload["name"], attack, "{}", r.body);
        assert_eq!(payload["plan"], "gold", "{}", r.body);

        // A webhook body that is not JSON once rendered is an error.
        let s = one("body = 'name={{ name }}'\n");
        let err = s
            .render("t", Channel::Webhook, None, None, &var("name", "a"))
            .unwrap_err();
        assert_eq!(err.reason(), "template_failed");
        // The same body is fine as text for SMS.
        assert_eq!(
            s.render("t", Channel::Sms, None, None, &var("name", "a"))
                .expect("sms")
                .body,
            "name=a"
        );
    }

    #[test]
    fn conditionals_loops_and_filters() {
        let s = one(
            "body = '{% if coupon is defined %}Use {{ coupon | upper }}. {% endif %}{% for w in words | split %}[{{ w }}]{% endfor %}'\n",
        );
        let mut v = var("words", "a b");
        assert_eq!(
            s.render("t", Channel::Sms, None, None, &v).expect("r").body,
            "[a][b]"
        );
        v.insert("coupon".into(), "save10".into());
        assert_eq!(
            s.render("t", Channel::Sms, None, None, &v).expect("r").body,
            "Use SAVE10. [a][b]"
        );
    }
}
