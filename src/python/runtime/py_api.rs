//! The complete list of Python functions the compiled code calls.
//!
//! The bus's loop glue, worker threads, control plane and persistence flows are
//! Python (`mpm_events._bus`, whose `__init__` lists the same names); each is
//! imported once and called through the function of the same name here, so this
//! file is the whole Rust -> Python contract. (The other direction, the private
//! `_x` methods of `EventBus` that `_bus` calls, is declared in `_core.pyi`.)

use pyo3::call::PyCallArgs;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

macro_rules! python_functions {
    ($($(#[$doc:meta])* $name:ident = $module:literal . $attr:literal;)*) => {
        $(
            $(#[$doc])*
            pub fn $name<'py>(py: Python<'py>, args: impl PyCallArgs<'py>) -> PyResult<Bound<'py, PyAny>> {
                static CELL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
                CELL.import(py, $module, $attr)?.call1(args)
            }
        )*
        /// Every `(module, name)` above, for the test that checks they exist.
        #[allow(dead_code)]
        pub const ALL: &[(&str, &str)] = &[$(($module, $attr)),*];
    };
}

python_functions! {
    /// `(bus, fd, loop)`: watch the wake-up socket and the loop's shutdown.
    attach = "mpm_events._bus"."attach";
    /// `(fd, loop)`: stop watching the wake-up socket.
    detach = "mpm_events._bus"."detach";
    /// `(bus,)`: the bus's loop has shut down; take over the running one or raise.
    rebind = "mpm_events._bus"."rebind";
    /// `(bus, loop)`: rebind to `loop` if the bus's own loop is gone; returns a bool.
    rebind_if_gone = "mpm_events._bus"."rebind_if_gone";
    /// `(bus, consumer)`: `EventBus.subscribe`'s coroutine.
    subscribe = "mpm_events._bus"."subscribe";
    /// `(bus, name)`: `EventBus.unsubscribe`'s coroutine.
    unsubscribe = "mpm_events._bus"."unsubscribe";
    /// `(bus, timeout)`: `EventBus.join`'s coroutine.
    join = "mpm_events._bus"."join";
    /// `(bus, timeout)`: `EventBus.stop`'s coroutine.
    stop = "mpm_events._bus"."stop";
    /// `(bus, since, until, topics, to, rule)`: `EventBus.replay`'s coroutine.
    replay = "mpm_events._bus"."replay";
    /// `(bus, names, watermark)`: redeliver unacknowledged stored events at start.
    start_redelivery = "mpm_events._bus"."start_redelivery";
    /// `(awaitables,)`: a coroutine counting the true results (durable publish_batch).
    count_true = "mpm_events._bus"."count_true";
    /// `(job, awaitable, timeout)`: finish a suspended consumer call in a Task.
    continue_job = "mpm_events._bus"."continue_job";
    /// `(iterator, yielded)`: an awaitable continuing a coroutine that yielded once.
    resume_from = "mpm_events._bus"."resume_from";
    /// `(awaitable, consumer name)`: run an error handler's rest without waiting.
    spawn = "mpm_events._bus"."spawn";
    /// `(job source, thread name)`: start a plain-function consumer's worker thread.
    start_sync_worker = "mpm_events._bus"."start_sync_worker";
    /// `(function,)`: run a blocking call on the loop's default executor.
    to_thread = "mpm_events._bus"."to_thread";
    /// `(producer, event)`: a producer subclass's publish through its bus.
    publish_via_bus = "mpm_events.producers"."_publish_via_bus";
    /// `(producer, events)`: a producer's publish_batch through its bus.
    publish_batch_via_bus = "mpm_events.producers"."_publish_batch";
    /// `(bus, method, path, query, body)`: one monitor JSON API request -> `(status, json)`.
    monitor_api = "mpm_events._monitor"."api";
}
