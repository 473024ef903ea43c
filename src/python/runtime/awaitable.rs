//! Awaitables made in Rust: [`Ready`] (already complete, no loop iteration) and
//! [`Pending`] (a sync-durability publish waiting for the store's writer).

use pyo3::exceptions::PyStopIteration;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

static READY_TRUE: PyOnceLock<Py<Ready>> = PyOnceLock::new();
static READY_FALSE: PyOnceLock<Py<Ready>> = PyOnceLock::new();

/// An already-finished awaitable holding a value. It is a coroutine in
/// asyncio's sense (``asyncio.iscoroutine`` is true), so ``await``,
/// ``create_task``, ``ensure_future`` and ``gather`` all accept it, and it
/// costs no event-loop iteration.
#[pyclass(module = "mpm_events._core", name = "_Ready", frozen)]
pub struct Ready {
    value: Py<PyAny>,
    /// The `StopIteration(value)` every `__next__` raises, made on first use.
    stop: PyOnceLock<Py<PyAny>>,
}

impl Ready {
    /// A shared instance for a bool result.
    pub fn of_bool(py: Python<'_>, v: bool) -> Py<Ready> {
        let cell = if v { &READY_TRUE } else { &READY_FALSE };
        cell.get_or_init(py, || {
            Py::new(
                py,
                Ready {
                    value: pyo3::types::PyBool::new(py, v)
                        .to_owned()
                        .into_any()
                        .unbind(),
                    stop: PyOnceLock::new(),
                },
            )
            .expect("alloc")
        })
        .clone_ref(py)
    }

    /// A new instance for any value.
    pub fn of(py: Python<'_>, value: Py<PyAny>) -> PyResult<Py<Ready>> {
        Py::new(
            py,
            Ready {
                value,
                stop: PyOnceLock::new(),
            },
        )
    }
}

#[pymethods]
impl Ready {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }
    fn __next__(&self, py: Python<'_>) -> PyResult<()> {
        // NOTE: one StopIteration instance per awaitable, raised again at every
        // await: the shared True/False awaitables answer every in-memory publish,
        // and making the exception anew (a lazy error normalized into a new
        // instance) was ~800 instructions of W1's ~15k per event (callgrind,
        // issue 16). The traceback a pass through Python frames left on it is
        // cleared first, so it never grows; no `__context__` is set, since the
        // error is restored as is (PyErr_Restore), not raised with PyErr_SetObject.
        let stop = self.stop.get_or_init(py, || {
            PyStopIteration::new_err((self.value.clone_ref(py),))
                .into_value(py)
                .into_any()
        });
        // SAFETY: `stop` is a live exception instance; None is a valid traceback.
        unsafe { pyo3::ffi::PyException_SetTraceback(stop.as_ptr(), pyo3::ffi::Py_None()) };
        Err(PyErr::from_value(stop.bind(py).clone()))
    }
    #[pyo3(signature = (_value=None))]
    fn send(&self, py: Python<'_>, _value: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.__next__(py)
    }
    #[pyo3(signature = (typ, val=None, _tb=None))]
    fn throw(
        &self,
        typ: &Bound<'_, PyAny>,
        val: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        Err(match val {
            Some(v) if !v.is_none() => PyErr::from_value(v.clone()),
            _ => PyErr::from_value(typ.clone()),
        })
    }
    fn close(&self) {}
}

/// The awaitable of a sync-durability `publish`: a coroutine (in asyncio's sense, so
/// `create_task` accepts it) that waits for the writer's answer.
#[pyclass(module = "mpm_events._core", name = "_Pending", frozen)]
pub struct Pending {
    pub(crate) it: Py<PyAny>,
}

#[pymethods]
impl Pending {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }
    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.it.bind(py).call_method0(intern!(py, "__next__"))
    }
    #[pyo3(signature = (value=None))]
    fn send<'py>(
        &self,
        py: Python<'py>,
        value: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let v = value.unwrap_or_else(|| py.None().into_bound(py));
        self.it.bind(py).call_method1(intern!(py, "send"), (v,))
    }
    #[pyo3(signature = (typ, val=None, tb=None))]
    fn throw<'py>(
        &self,
        py: Python<'py>,
        typ: Bound<'py, PyAny>,
        val: Option<Bound<'py, PyAny>>,
        tb: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let exc = match val {
            Some(v) if !v.is_none() => v,
            _ => typ,
        };
        let _ = tb;
        self.it.bind(py).call_method1(intern!(py, "throw"), (exc,))
    }
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.it
            .bind(py)
            .call_method0(intern!(py, "close"))
            .map(|_| ())
    }
}
