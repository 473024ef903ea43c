//! `ConsumerConfig` and the reading of any consumer's configuration.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::backend::StartAt;
use crate::python::convert::priority::{consumer_priority_member, read_consumer_priority};
use crate::python::model::rule::compile_rule;
use crate::python::runtime::errors::{config_error, topic_error};
use crate::retry::RetryPolicy;
use crate::topic::Pattern;

#[doc = stub_doc!(ConsumerConfig)]
#[pyclass(module = "mpm_events._core", name = "ConsumerConfig", subclass)]
pub struct ConsumerConfig {
    #[pyo3(get, set)]
    name: Py<PyAny>,
    #[pyo3(get, set)]
    topics: Py<PyAny>,
    #[pyo3(get, set)]
    topic_pattern: Py<PyAny>,
    priority: u8,
    #[pyo3(get, set)]
    batch_size: i64,
    #[pyo3(get, set)]
    batch_timeout: f64,
    #[pyo3(get, set)]
    max_retries: i64,
    #[pyo3(get, set)]
    retry_backoff: f64,
    #[pyo3(get, set)]
    error_handler: Py<PyAny>,
    #[pyo3(get, set)]
    filter_func: Py<PyAny>,
    #[pyo3(get, set)]
    transform_func: Py<PyAny>,
    #[pyo3(get, set)]
    retry_delay: f64,
    #[pyo3(get, set)]
    max_retry_delay: f64,
    #[pyo3(get, set)]
    timeout: f64,
    #[pyo3(get, set)]
    ordered: bool,
    #[pyo3(get, set)]
    claim_timeout: f64,
    #[pyo3(get, set)]
    start: Py<PyAny>,
    #[pyo3(get, set)]
    rule: Py<PyAny>,
}

#[pymethods]
impl ConsumerConfig {
    #[new]
    #[pyo3(signature = (name, topics=None, topic_pattern=None, priority=None, batch_size=1, batch_timeout=0.0, max_retries=3, retry_backoff=1.0, error_handler=None, filter_func=None, transform_func=None, *, retry_delay=0.1, max_retry_delay=30.0, timeout=30.0, ordered=false, claim_timeout=30.0, start=None, rule=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: Py<PyAny>,
        topics: Option<Py<PyAny>>,
        topic_pattern: Option<Py<PyAny>>,
        priority: Option<&Bound<'_, PyAny>>,
        batch_size: i64,
        batch_timeout: f64,
        max_retries: i64,
        retry_backoff: f64,
        error_handler: Option<Py<PyAny>>,
        filter_func: Option<Py<PyAny>>,
        transform_func: Option<Py<PyAny>>,
        retry_delay: f64,
        max_retry_delay: f64,
        timeout: f64,
        ordered: bool,
        claim_timeout: f64,
        start: Option<Bound<'_, PyAny>>,
        rule: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let priority = match priority {
            Some(p) if !p.is_none() => read_consumer_priority(p)?,
            _ => 3,
        };
        let none = || py.None();
        let start = match start {
            Some(s) if !s.is_none() => s,
            _ => pyo3::types::PyString::new(py, "earliest").into_any(),
        };
        // NOTE: checked here too, so a bad value fails where it was written.
        let label = name
            .bind(py)
            .str()
            .map(|s| s.to_string())
            .unwrap_or_default();
        check_claim_timeout(claim_timeout, &label)?;
        read_start(&start, &label)?;
        let rule = match rule {
            Some(r) if !r.is_none() => {
                compile_rule(&r, &format!("consumer {label:?}: rule"))?;
                r.unbind()
            }
            _ => none(),
        };
        Ok(ConsumerConfig {
            rule,
            name,
            topics: topics.unwrap_or_else(none),
            topic_pattern: topic_pattern.unwrap_or_else(none),
            priority,
            batch_size,
            batch_timeout,
            max_retries,
            retry_backoff,
            error_handler: error_handler.unwrap_or_else(none),
            filter_func: filter_func.unwrap_or_else(none),
            transform_func: transform_func.unwrap_or_else(none),
            retry_delay,
            max_retry_delay,
            timeout,
            ordered,
            claim_timeout,
            start: start.unbind(),
        })
    }

    /// Accepts the constructor's arguments again so that a subclass's
    /// `super().__init__(...)` works (the object is built in `__new__`).
    #[pyo3(signature = (*_args, **_kwargs))]
    fn __init__(
        &self,
        _args: &Bound<'_, pyo3::types::PyTuple>,
        _kwargs: Option<&Bound<'_, pyo3::types::PyDict>>,
    ) {
    }

    #[getter]
    fn priority<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        consumer_priority_member(py, self.priority)
    }

    #[setter]
    fn set_priority(&mut self, v: &Bound<'_, PyAny>) -> PyResult<()> {
        self.priority = read_consumer_priority(v)?;
        Ok(())
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "ConsumerConfig(name={}, topics={}, priority={}, batch_size={}, batch_timeout={}, max_retries={}, retry_backoff={}, retry_delay={}, max_retry_delay={}, timeout={}, ordered={}, claim_timeout={}, start={}, rule={})",
            self.name.bind(py).repr()?,
            self.topics.bind(py).repr()?,
            ["CRITICAL", "HIGH", "NORMAL", "LOW", "DEFERRED"][(self.priority - 1) as usize],
            self.batch_size,
            self.batch_timeout,
            self.max_retries,
            self.retry_backoff,
            self.retry_delay,
            self.max_retry_delay,
            self.timeout,
            if self.ordered { "True" } else { "False" },
            self.claim_timeout,
            self.start.bind(py).repr()?,
            self.rule.bind(py).repr()?
        ))
    }
}

/// Everything the bus needs from a consumer's configuration, validated.
pub struct ConsumerSpec {
    pub name: Arc<str>,
    pub patterns: Vec<Pattern>,
    pub topic_names: Vec<String>,
    pub regex: Option<regex::Regex>,
    pub priority: u8,
    pub batch_size: usize,
    pub batch_timeout: Duration,
    pub retry: RetryPolicy,
    pub timeout: Duration,
    pub error_handler: Option<Py<PyAny>>,
    pub filter_func: Option<Py<PyAny>>,
    pub transform_func: Option<Py<PyAny>>,
    pub ordered: bool,
    /// Shared-log consumers: claim timeout of the group reader.
    pub claim_timeout: Duration,
    /// Shared-log consumers: where a consumer name new to the log starts.
    pub start: StartAt,
    /// The content rule, compiled.
    pub rule: Option<crate::rules::Rule>,
}

/// `claim_timeout` must be a finite number of seconds, at least 0.03 (the group
/// reader renews its claims three times per timeout).
fn check_claim_timeout(v: f64, name: &str) -> PyResult<Duration> {
    if !v.is_finite() || v < 0.03 {
        return Err(config_error(format!(
            "consumer {name:?}: claim_timeout must be a number of seconds >= 0.03, got {v}"
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

/// `start`: `"earliest"`, `"latest"` or a `datetime` (a naive one is taken as UTC,
/// as event timestamps are).
fn read_start(v: &Bound<'_, PyAny>, name: &str) -> PyResult<StartAt> {
    if v.is_none() {
        return Ok(StartAt::Earliest);
    }
    if let Ok(s) = v.cast::<PyString>() {
        return match &*s.to_cow()? {
            "earliest" => Ok(StartAt::Earliest),
            "latest" => Ok(StartAt::Latest),
            other => Err(config_error(format!(
                "consumer {name:?}: start must be \"earliest\", \"latest\" or a datetime, got {other:?}"
            ))),
        };
    }
    if let Ok(t) = v.extract::<chrono::DateTime<chrono::FixedOffset>>() {
        return Ok(StartAt::Time(t.timestamp_micros()));
    }
    if let Ok(t) = v.extract::<chrono::NaiveDateTime>() {
        return Ok(StartAt::Time(t.and_utc().timestamp_micros()));
    }
    Err(config_error(format!(
        "consumer {name:?}: start must be \"earliest\", \"latest\" or a datetime, got {}",
        crate::python::convert::text::type_name(v)
    )))
}

fn seconds(v: f64, field: &str, name: &str) -> PyResult<Duration> {
    if !v.is_finite() || v < 0.0 {
        return Err(config_error(format!(
            "consumer {name:?}: {field} must be a finite number >= 0, got {v}"
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

fn optional_callable(
    obj: &Bound<'_, PyAny>,
    field: &str,
    name: &str,
) -> PyResult<Option<Py<PyAny>>> {
    if obj.is_none() {
        return Ok(None);
    }
    if !obj.is_callable() {
        return Err(config_error(format!(
            "consumer {name:?}: {field} must be callable or None"
        )));
    }
    Ok(Some(obj.clone().unbind()))
}

impl ConsumerSpec {
    /// Reads and validates `config`: our `ConsumerConfig` or any object with its
    /// attributes (the original's dataclass included). New optional fields
    /// (`retry_delay`, `max_retry_delay`, `timeout`, `ordered`, `claim_timeout`,
    /// `start`) default when absent.
    pub fn read(config: &Bound<'_, PyAny>) -> PyResult<Self> {
        let get = |attr: &str| -> PyResult<Bound<'_, PyAny>> {
            config
                .getattr(attr)
                .map_err(|_| config_error(format!("consumer config has no attribute {attr:?}")))
        };
        let get_or = |attr: &str, default: f64| -> PyResult<f64> {
            match config.getattr(attr) {
                Ok(v) if !v.is_none() => v
                    .extract()
                    .map_err(|_| config_error(format!("config.{attr} must be a number"))),
                _ => Ok(default),
            }
        };
        let name_obj = get("name")?;
        let name: String = name_obj
            .cast::<PyString>()
            .map_err(|_| config_error("config.name must be a str"))?
            .to_cow()?
            .into_owned();
        if name.is_empty() {
            return Err(config_error("config.name must not be empty"));
        }
        let topics_obj = get("topics")?;
        let (patterns, topic_names) = if topics_obj.is_none() {
            (Vec::new(), Vec::new())
        } else {
            if topics_obj.is_instance_of::<PyString>() {
                return Err(config_error(format!(
                    "consumer {name:?}: topics must be a list of patterns, not a str"
                )));
            }
            let mut patterns = Vec::new();
            let mut names = Vec::new();
            for t in topics_obj
                .try_iter()
                .map_err(|_| config_error(format!("consumer {name:?}: topics must be a list")))?
            {
                let t = t?;
                let s: String = t.extract().map_err(|_| {
                    config_error(format!("consumer {name:?}: every topic must be a str"))
                })?;
                patterns.push(Pattern::parse(&s).map_err(topic_error)?);
                names.push(s);
            }
            (patterns, names)
        };
        let pattern_obj = get("topic_pattern")?;
        let regex = if pattern_obj.is_none() {
            None
        } else {
            let src: String = match pattern_obj.getattr("pattern") {
                Ok(p) => p.extract()?,
                Err(_) => pattern_obj.extract().map_err(|_| {
                    config_error("config.topic_pattern must be a re.Pattern or str")
                })?,
            };
            // NOTE: the original used re.match, which anchors at the start only.
            let anchored = format!("^(?:{src})");
            Some(regex::Regex::new(&anchored).map_err(|e| {
                config_error(format!(
                    "consumer {name:?}: topic_pattern {src:?} is not a supported regex: {e}"
                ))
            })?)
        };
        // None topics and no regex means every topic, as in the original.
        let (patterns, topic_names) = if patterns.is_empty() && regex.is_none() {
            (
                vec![Pattern::parse("**").expect("valid")],
                vec!["**".to_owned()],
            )
        } else {
            (patterns, topic_names)
        };
        let priority = read_consumer_priority(&get("priority")?)?;
        let batch_size: i64 = get("batch_size")?
            .extract()
            .map_err(|_| config_error("config.batch_size must be an int"))?;
        if batch_size < 1 {
            return Err(config_error(format!(
                "consumer {name:?}: batch_size must be >= 1, got {batch_size}"
            )));
        }
        let batch_timeout = seconds(get("batch_timeout")?.extract()?, "batch_timeout", &name)?;
        let max_retries: i64 = get("max_retries")?
            .extract()
            .map_err(|_| config_error("config.max_retries must be an int"))?;
        if max_retries < 0 {
            return Err(config_error(format!(
                "consumer {name:?}: max_retries must be >= 0"
            )));
        }
        let retry_backoff: f64 = get("retry_backoff")?.extract()?;
        if !retry_backoff.is_finite() || retry_backoff <= 0.0 {
            return Err(config_error(format!(
                "consumer {name:?}: retry_backoff must be > 0"
            )));
        }
        let retry = RetryPolicy {
            max_retries: max_retries.min(u32::MAX as i64) as u32,
            retry_delay: seconds(get_or("retry_delay", 0.1)?, "retry_delay", &name)?,
            retry_backoff,
            max_retry_delay: seconds(get_or("max_retry_delay", 30.0)?, "max_retry_delay", &name)?,
            jitter: 0.1,
        };
        let timeout = seconds(get_or("timeout", 30.0)?, "timeout", &name)?;
        let ordered = match config.getattr("ordered") {
            Ok(v) if !v.is_none() => v.is_truthy()?,
            _ => false,
        };
        let claim_timeout = check_claim_timeout(get_or("claim_timeout", 30.0)?, &name)?;
        let start = match config.getattr("start") {
            Ok(v) => read_start(&v, &name)?,
            Err(_) => StartAt::Earliest,
        };
        let rule = match config.getattr("rule") {
            Ok(r) if !r.is_none() => Some(compile_rule(&r, &format!("consumer {name:?}: rule"))?),
            _ => None,
        };
        if timeout.is_zero() {
            return Err(config_error(format!(
                "consumer {name:?}: timeout must be > 0"
            )));
        }
        Ok(ConsumerSpec {
            error_handler: optional_callable(&get("error_handler")?, "error_handler", &name)?,
            filter_func: optional_callable(&get("filter_func")?, "filter_func", &name)?,
            transform_func: optional_callable(&get("transform_func")?, "transform_func", &name)?,
            name: name.into(),
            patterns,
            topic_names,
            regex,
            priority,
            batch_size: batch_size as usize,
            batch_timeout,
            retry,
            timeout,
            ordered,
            claim_timeout,
            start,
            rule,
        })
    }
}
