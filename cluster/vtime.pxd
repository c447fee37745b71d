# The C types of the compiled build of vtime.py: Cython reads this file beside vtime.py and
# makes these classes extension types with these fields (the pure module ignores it). See
# setup.py and cluster/__init__.py.

from cpython.contextvars cimport PyContext_Enter, PyContext_Exit

cdef extern from *:
    """
    /* coro.send(None), as the pure module calls it, without looking up a bound method:
       the value the coroutine yields, or NULL with StopIteration(value) or its error set */
    static PyObject *mmusim_send_none(PyObject *coro) {
        PyObject *res = NULL;
        PySendResult r = PyIter_Send(coro, Py_None, &res);
        if (r == PYGEN_NEXT)
            return res;
        if (r == PYGEN_RETURN) {
            PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, res);
            Py_DECREF(res);
            if (stop != NULL) {
                PyErr_SetObject(PyExc_StopIteration, stop);
                Py_DECREF(stop);
            }
        }
        return NULL;
    }
    """
    object _send_none "mmusim_send_none" (object coro)

cdef class Trace:
    cdef public str level
    cdef public Py_ssize_t BATCH
    cdef object _hash
    cdef object _times_hash
    cdef list _buf
    cdef Py_ssize_t _buf_other
    cdef list _times
    cdef double _now
    cdef double _full_now
    cdef list _entries
    cdef Py_ssize_t _steps
    cdef public Py_ssize_t events
    cpdef void at(self, double now)
    cpdef void step(self, double now, str key)
    cpdef void event(self, double now, str kind, str detail)
    cpdef void _flush(self)

cdef class _Core:
    cdef public double now
    cdef public list sleepers
    cdef public long long seq
    cdef public Py_ssize_t dead
    cdef public object ready
    cdef public object ready_append

cdef class _Run:
    cdef public object task
    cdef public object loop
    cdef public _Core core
    cdef public object coro
    cdef public object context
    cdef public str name
    cdef public long long sleeping
    cdef public bint must_cancel
    cdef public object fut_waiter
    cdef public object timed

cdef class VirtualClock:
    cdef public object _loop
    cdef object _core

cdef class _Sleep:
    cdef double when
    cdef bint yielded

cpdef void _wake(_Run run)
cpdef void _resume(_Run run)
cpdef void _step_run(_Run run, exc)
cpdef void _run_fifo(loop, _Core core, Trace trace, list sched)

cdef class _FutureMaker:
    cdef object loop

cdef dict _current_tasks
cdef object _get_running_loop
cdef object _heappush
cdef object _heappop
