//! Awaitables made in Rust: [`Ready`] (already complete, no loop iteration) and
//! [`Pending`] (a sync-durability publish waiting for the store's writer).

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

static READY_TRUE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static READY_FALSE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static READY_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// An already-finished awaitable holding a value (`mpm_events._core._Ready`). It is
/// a coroutine in asyncio's sense (``asyncio.iscoroutine`` is true), so ``await``,
/// ``create_task``, ``ensure_future`` and ``gather`` all accept it, and it costs no
/// event-loop iteration.
///
/// The type is made with the C API, not `#[pyclass]`, for one slot pyo3 cannot
/// give: `am_send`. With it an `await` (and a Task's step) takes the value straight
/// from the slot (`PyIter_Send` returns `PYGEN_RETURN`): no `StopIteration` is made
/// or fetched and no pyo3 call wrapper runs for `__await__` or `__next__`; that was
/// ~650 of a W1 event's ~13k instructions (issue 16). `__next__` and `send()` still
/// raise `StopIteration(value)` for code that steps it by hand.
pub struct Ready;

/// The instance layout of `_Ready`: the object header and the value it holds.
#[repr(C)]
struct ReadyObject {
    ob_base: ffi::PyObject,
    value: *mut ffi::PyObject,
}

/// `am_send`'s signature (the limited API has the slot but not the typedef).
type SendFn = unsafe extern "C" fn(
    *mut ffi::PyObject,
    *mut ffi::PyObject,
    *mut *mut ffi::PyObject,
) -> ffi::PySendResult;

/// The value a `_Ready` holds (a borrowed reference).
///
/// # Safety
/// `slf` must be a live `_Ready` instance.
unsafe fn ready_value(slf: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: per the contract, `slf` has the `ReadyObject` layout.
    unsafe { (*slf.cast::<ReadyObject>()).value }
}

/// Sets `StopIteration(value)` as the current error.
///
/// # Safety
/// The GIL must be held; `value` must be a live object.
unsafe fn raise_stop(value: *mut ffi::PyObject) {
    // NOTE: the value is wrapped in an args tuple so that a tuple value is not
    // taken as the exception's arguments.
    // SAFETY: GIL held (contract); every pointer is checked before use.
    unsafe {
        let args = ffi::PyTuple_Pack(1, value);
        if args.is_null() {
            return;
        }
        let exc = ffi::PyObject_Call(ffi::PyExc_StopIteration, args, std::ptr::null_mut());
        ffi::Py_DECREF(args);
        if !exc.is_null() {
            ffi::PyErr_SetObject(ffi::PyExc_StopIteration, exc);
            ffi::Py_DECREF(exc);
        }
    }
}

unsafe extern "C" fn ready_dealloc(slf: *mut ffi::PyObject) {
    // SAFETY: called by CPython with a `_Ready` whose refcount reached zero; the
    // type is a heap type, so the instance holds a reference to it.
    unsafe {
        let tp = ffi::Py_TYPE(slf);
        ffi::Py_XDECREF(ready_value(slf));
        let free: ffi::freefunc = std::mem::transmute(ffi::PyType_GetSlot(tp, ffi::Py_tp_free));
        free(slf.cast());
        ffi::Py_DECREF(tp.cast());
    }
}

/// `__await__` and `__iter__`: the object itself.
unsafe extern "C" fn ready_self(slf: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: `slf` is live (CPython's call).
    unsafe { ffi::Py_INCREF(slf) };
    slf
}

unsafe extern "C" fn ready_am_send(
    slf: *mut ffi::PyObject,
    _arg: *mut ffi::PyObject,
    result: *mut *mut ffi::PyObject,
) -> ffi::PySendResult {
    // SAFETY: `slf` is a live `_Ready` and `result` a valid out-pointer (CPython's
    // call); the new reference goes to the caller.
    unsafe {
        let v = ready_value(slf);
        ffi::Py_INCREF(v);
        *result = v;
    }
    ffi::PySendResult::PYGEN_RETURN
}

unsafe extern "C" fn ready_next(slf: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: `slf` is a live `_Ready` (CPython's call, GIL held).
    unsafe { raise_stop(ready_value(slf)) };
    std::ptr::null_mut()
}

unsafe extern "C" fn ready_send(
    slf: *mut ffi::PyObject,
    _args: *mut ffi::PyObject,
    _kwargs: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: as `ready_next`, whose work this is.
    unsafe { ready_next(slf) }
}

/// `throw(typ, val=None, tb=None)`: raises `val` if given, else `typ`.
unsafe extern "C" fn ready_throw(
    _slf: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
    _kwargs: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: `args` is the call's live argument tuple (GIL held); items are
    // borrowed from it for the duration of this call.
    unsafe {
        let n = ffi::PyTuple_Size(args);
        let typ = if n >= 1 {
            ffi::PyTuple_GetItem(args, 0)
        } else {
            std::ptr::null_mut()
        };
        let val = if n >= 2 {
            ffi::PyTuple_GetItem(args, 1)
        } else {
            std::ptr::null_mut()
        };
        let exc = if !val.is_null() && val != ffi::Py_None() {
            val
        } else {
            typ
        };
        if exc.is_null() {
            ffi::PyErr_SetString(ffi::PyExc_TypeError, c"throw() takes an exception".as_ptr());
        } else if ffi::PyExceptionInstance_Check(exc) != 0 {
            ffi::PyErr_SetObject(ffi::Py_TYPE(exc).cast(), exc);
        } else if ffi::PyExceptionClass_Check(exc) != 0 {
            ffi::PyErr_SetNone(exc);
        } else {
            ffi::PyErr_SetString(
                ffi::PyExc_TypeError,
                c"throw() takes an exception type or instance".as_ptr(),
            );
        }
    }
    std::ptr::null_mut()
}

unsafe extern "C" fn ready_close(
    _slf: *mut ffi::PyObject,
    _args: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: GIL held (CPython's call).
    unsafe {
        ffi::Py_INCREF(ffi::Py_None());
        ffi::Py_None()
    }
}

impl Ready {
    /// The `_Ready` type, made on first use.
    pub fn type_object(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
        READY_TYPE
            .get_or_try_init(py, || Self::make_type(py))
            .map(|t| t.bind(py))
    }

    fn make_type(py: Python<'_>) -> PyResult<Py<PyType>> {
        let method = |name: &'static std::ffi::CStr,
                      meth: ffi::PyMethodDefPointer,
                      flags: std::os::raw::c_int,
                      doc: &'static std::ffi::CStr| ffi::PyMethodDef {
            ml_name: name.as_ptr(),
            ml_meth: meth,
            ml_flags: flags,
            ml_doc: doc.as_ptr(),
        };
        // NOTE: CPython keeps pointers into the method table and the name for the
        // type's lifetime: both are 'static (the table is leaked once).
        let methods: &'static mut [ffi::PyMethodDef] = Box::leak(Box::new([
            method(
                c"send",
                ffi::PyMethodDefPointer {
                    PyCFunctionWithKeywords: ready_send,
                },
                ffi::METH_VARARGS | ffi::METH_KEYWORDS,
                c"Raises StopIteration(value) at once.",
            ),
            method(
                c"throw",
                ffi::PyMethodDefPointer {
                    PyCFunctionWithKeywords: ready_throw,
                },
                ffi::METH_VARARGS | ffi::METH_KEYWORDS,
                c"Raises the given exception.",
            ),
            method(
                c"close",
                ffi::PyMethodDefPointer {
                    PyCFunction: ready_close,
                },
                ffi::METH_NOARGS,
                c"Does nothing: the awaitable is finished.",
            ),
            ffi::PyMethodDef::zeroed(),
        ]));
        let send: SendFn = ready_am_send;
        let slot = |slot, pfunc: *mut std::ffi::c_void| ffi::PyType_Slot { slot, pfunc };
        let doc = c"An awaitable that is already complete and holds its result.";
        let mut slots = [
            slot(ffi::Py_tp_dealloc, ready_dealloc as *mut _),
            slot(ffi::Py_am_await, ready_self as *mut _),
            slot(ffi::Py_am_send, send as *mut _),
            slot(ffi::Py_tp_iter, ready_self as *mut _),
            slot(ffi::Py_tp_iternext, ready_next as *mut _),
            slot(ffi::Py_tp_methods, methods.as_mut_ptr().cast()),
            slot(ffi::Py_tp_doc, doc.as_ptr().cast_mut().cast()),
            slot(0, std::ptr::null_mut()),
        ];
        let mut spec = ffi::PyType_Spec {
            name: c"mpm_events._core._Ready".as_ptr(),
            basicsize: std::mem::size_of::<ReadyObject>() as std::os::raw::c_int,
            itemsize: 0,
            flags: (ffi::Py_TPFLAGS_DEFAULT
                | ffi::Py_TPFLAGS_IMMUTABLETYPE
                | ffi::Py_TPFLAGS_DISALLOW_INSTANTIATION)
                as std::os::raw::c_uint,
            slots: slots.as_mut_ptr(),
        };
        // SAFETY: the spec and slots are valid for the call (CPython copies them);
        // the name, doc and method table are 'static.
        let tp = unsafe { ffi::PyType_FromSpec(&mut spec) };
        // SAFETY: a new reference to a type object, or NULL with an error set.
        Ok(unsafe { Bound::from_owned_ptr_or_err(py, tp)? }
            .cast_into::<PyType>()?
            .unbind())
    }

    /// A shared instance for a bool result.
    pub fn of_bool(py: Python<'_>, v: bool) -> Py<PyAny> {
        let cell = if v { &READY_TRUE } else { &READY_FALSE };
        cell.get_or_init(py, || {
            Self::of(
                py,
                pyo3::types::PyBool::new(py, v)
                    .to_owned()
                    .into_any()
                    .unbind(),
            )
            .expect("alloc")
        })
        .clone_ref(py)
    }

    /// A new instance for any value.
    pub fn of(py: Python<'_>, value: Py<PyAny>) -> PyResult<Py<PyAny>> {
        let tp = Self::type_object(py)?;
        // SAFETY: `tp` is our live heap type; tp_alloc returns a new zeroed
        // instance holding a reference to the type, or NULL with an error set.
        unsafe {
            let alloc: ffi::allocfunc =
                std::mem::transmute(ffi::PyType_GetSlot(tp.as_type_ptr(), ffi::Py_tp_alloc));
            let obj = alloc(tp.as_type_ptr(), 0);
            let obj = Bound::from_owned_ptr_or_err(py, obj)?;
            (*obj.as_ptr().cast::<ReadyObject>()).value = value.into_ptr();
            Ok(obj.unbind())
        }
    }
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
