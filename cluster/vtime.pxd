# The C types of the compiled build of vtime.py: Cython reads this file beside vtime.py and
# makes these classes extension types with these fields (the pure module ignores it). See
# setup.py and cluster/__init__.py.

from cpython cimport array
from cpython.contextvars cimport PyContext_Enter, PyContext_Exit

cdef extern from *:
    """
    #include <structmember.h>  /* PyMemberDef (Python.h has it only from 3.12) */

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

    /* heapq.heappush and heapq.heappop for the sleeper heap, whose entries are tuples
       (when, seq, run) with a unique seq: the same algorithm as the _heapq module's (so the
       same heap, entry for entry), comparing (when, seq) as C numbers rather than the tuples
       through rich comparison (run is never compared, as with the tuples: seq is unique) */
    static CYTHON_INLINE double mmusim_when(PyObject *w) {
        return PyFloat_CheckExact(w) ? PyFloat_AS_DOUBLE(w) : PyFloat_AsDouble(w);
    }
    static CYTHON_INLINE int mmusim_entry_lt(PyObject *a, PyObject *b) {
        double x = mmusim_when(PyTuple_GET_ITEM(a, 0)), y = mmusim_when(PyTuple_GET_ITEM(b, 0));
        if (x != y)
            return x < y;
        return PyLong_AsLongLong(PyTuple_GET_ITEM(a, 1)) < PyLong_AsLongLong(PyTuple_GET_ITEM(b, 1));
    }
    static void mmusim_siftdown(PyObject **heap, Py_ssize_t startpos, Py_ssize_t pos) {
        PyObject *newitem = heap[pos];
        while (pos > startpos) {
            Py_ssize_t parentpos = (pos - 1) >> 1;
            PyObject *parent = heap[parentpos];
            if (!mmusim_entry_lt(newitem, parent))
                break;
            heap[pos] = parent;
            pos = parentpos;
        }
        heap[pos] = newitem;
    }
    static int mmusim_heap_push(PyObject *heap, PyObject *item) {
        if (PyList_Append(heap, item) < 0)
            return -1;
        mmusim_siftdown(((PyListObject *)heap)->ob_item, 0, PyList_GET_SIZE(heap) - 1);
        return 0;
    }
    /* the smallest entry (a new reference), taken out; the heap is not empty */
    static PyObject *mmusim_heap_pop(PyObject *heap) {
        Py_ssize_t n = PyList_GET_SIZE(heap) - 1;
        PyObject **arr = ((PyListObject *)heap)->ob_item;
        PyObject *last = arr[n], *ret;
        Py_SET_SIZE(heap, n);  /* the list keeps its allocation, as list.pop() may */
        if (n == 0)
            return last;
        ret = arr[0];
        arr[0] = last;
        /* heapq's _siftup: the smaller child up until a leaf, then _siftdown */
        Py_ssize_t pos = 0, childpos = 1;
        PyObject *newitem = arr[0];
        while (childpos < n) {
            Py_ssize_t rightpos = childpos + 1;
            if (rightpos < n && !mmusim_entry_lt(arr[childpos], arr[rightpos]))
                childpos = rightpos;
            arr[pos] = arr[childpos];
            pos = childpos;
            childpos = 2 * pos + 1;
        }
        arr[pos] = newitem;
        mmusim_siftdown(arr, 0, pos);
        return ret;
    }

    /* A slot of a class's __slots__ (SimFuture._waiter, SimTask._run), read and written at
       the offset its member descriptor gives, as the descriptor itself would (an unset slot
       reads as None here): without the attribute look-up through the type */
    static int mmusim_slot_offset(PyObject *descr, Py_ssize_t *offset) {
        if (Py_TYPE(descr) != &PyMemberDescr_Type) {
            PyErr_Format(PyExc_TypeError, "%R is not a slot", descr);
            return -1;
        }
        *offset = ((PyMemberDescrObject *)descr)->d_member->offset;
        return 0;
    }
    static CYTHON_INLINE PyObject *mmusim_slot_get(PyObject *obj, Py_ssize_t offset) {
        PyObject *v = *(PyObject **)((char *)obj + offset);
        if (v == NULL)
            v = Py_None;
        Py_INCREF(v);
        return v;
    }
    static CYTHON_INLINE void mmusim_slot_set(PyObject *obj, Py_ssize_t offset, PyObject *v) {
        PyObject **slot = (PyObject **)((char *)obj + offset);
        PyObject *old = *slot;
        Py_INCREF(v);
        *slot = v;
        Py_XDECREF(old);
    }
    static Py_ssize_t mmusim_waiter_offset = 0, mmusim_run_offset = 0;
    static int mmusim_waiter_init(PyObject *descr) { return mmusim_slot_offset(descr, &mmusim_waiter_offset); }
    static int mmusim_run_slot_init(PyObject *descr) { return mmusim_slot_offset(descr, &mmusim_run_offset); }
    static CYTHON_INLINE PyObject *mmusim_get_waiter(PyObject *fut) { return mmusim_slot_get(fut, mmusim_waiter_offset); }
    static CYTHON_INLINE void mmusim_set_waiter(PyObject *fut, PyObject *w) { mmusim_slot_set(fut, mmusim_waiter_offset, w); }
    static CYTHON_INLINE void mmusim_set_run(PyObject *task, PyObject *run) { mmusim_slot_set(task, mmusim_run_offset, run); }

    /* A new instance of ``type``, a subclass of the C asyncio.Future with no __init__ of its
       own (SimFuture; SimTask, whose __init__ this passes over), as ``type(**kwargs)`` would
       make a SimFuture: the type's tp_new, then the C Future's tp_init with ``kwargs``
       ({"loop": loop}, made once per loop), without type_call and a keyword dict per call */
    static initproc mmusim_future_tp_init = NULL;
    static PyObject *mmusim_no_args = NULL;
    static int mmusim_future_type_init(PyObject *future_type) {
        if (!PyType_Check(future_type) || ((PyTypeObject *)future_type)->tp_init == NULL) {
            PyErr_SetString(PyExc_TypeError, "asyncio.Future is not the C Future vtime expects");
            return -1;
        }
        mmusim_future_tp_init = ((PyTypeObject *)future_type)->tp_init;
        mmusim_no_args = PyTuple_New(0);
        return mmusim_no_args == NULL ? -1 : 0;
    }
    static PyObject *mmusim_new_future(PyObject *type, PyObject *kwargs) {
        PyTypeObject *tp = (PyTypeObject *)type;
        PyObject *fut = tp->tp_new(tp, mmusim_no_args, NULL);
        if (fut == NULL)
            return NULL;
        if (mmusim_future_tp_init(fut, mmusim_no_args, kwargs) < 0) {
            Py_DECREF(fut);
            return NULL;
        }
        return fut;
    }

    /* The C Future's own set_result (a METH_O method) and its _asyncio_future_blocking and
       _loop getsets (for a SimFuture, whose type does not override them), called straight as
       their descriptors would call them after checking the type: without the attribute
       look-up through the type */
    static PyCFunction mmusim_set_result = NULL;
    static PyGetSetDef *mmusim_blocking = NULL, *mmusim_loop = NULL;
    static int mmusim_future_init(PyObject *set_result, PyObject *blocking, PyObject *loop) {
        if (Py_TYPE(set_result) != &PyMethodDescr_Type
                || ((PyMethodDescrObject *)set_result)->d_method->ml_flags != METH_O
                || Py_TYPE(blocking) != &PyGetSetDescr_Type || Py_TYPE(loop) != &PyGetSetDescr_Type) {
            PyErr_SetString(PyExc_TypeError, "asyncio.Future is not the C Future vtime expects");
            return -1;
        }
        mmusim_set_result = ((PyMethodDescrObject *)set_result)->d_method->ml_meth;
        mmusim_blocking = ((PyGetSetDescrObject *)blocking)->d_getset;
        mmusim_loop = ((PyGetSetDescrObject *)loop)->d_getset;
        return 0;
    }
    static CYTHON_INLINE int mmusim_future_set_result(PyObject *fut, PyObject *result) {
        PyObject *r = mmusim_set_result(fut, result);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        return 0;
    }
    static CYTHON_INLINE int mmusim_future_blocking(PyObject *fut) {
        PyObject *b = mmusim_blocking->get(fut, mmusim_blocking->closure);
        if (b == NULL)
            return -1;
        int r = PyObject_IsTrue(b);
        Py_DECREF(b);
        return r;
    }
    static CYTHON_INLINE int mmusim_future_unblock(PyObject *fut) {
        return mmusim_blocking->set(fut, Py_False, mmusim_blocking->closure);
    }
    static CYTHON_INLINE PyObject *mmusim_future_loop(PyObject *fut) {
        return mmusim_loop->get(fut, mmusim_loop->closure);
    }

    /* float(x) for a number of virtual microseconds, without making a float of an int */
    static CYTHON_INLINE double mmusim_as_double(PyObject *x) {
        if (PyFloat_CheckExact(x))
            return PyFloat_AS_DOUBLE(x);
        if (PyLong_CheckExact(x))
            return PyLong_AsDouble(x);  /* what float(x) and float + x do with an int */
        return PyFloat_AsDouble(x);
    }

    /* the bits of a float64, as int.from_bytes(struct.pack("<d", x), "little") gives them */
    static CYTHON_INLINE unsigned long long mmusim_double_bits(double x) {
        unsigned long long u;
        memcpy(&u, &x, sizeof u);
        return u;
    }
    """
    object _send_none "mmusim_send_none" (object coro)
    int _waiter_init "mmusim_waiter_init" (object descr) except -1
    object _get_waiter "mmusim_get_waiter" (object fut)
    void _set_waiter "mmusim_set_waiter" (object fut, object waiter)
    int _run_slot_init "mmusim_run_slot_init" (object descr) except -1
    void _set_run "mmusim_set_run" (object task, object run)
    int _future_type_init "mmusim_future_type_init" (object future_type) except -1
    object _new_future "mmusim_new_future" (object type, dict kwargs)
    int _heap_push "mmusim_heap_push" (list heap, object entry) except -1
    tuple _heap_pop "mmusim_heap_pop" (list heap)
    int _future_init "mmusim_future_init" (object set_result, object blocking, object loop) except -1
    int _future_set_result_c "mmusim_future_set_result" (object fut, object result) except -1
    int _future_blocking "mmusim_future_blocking" (object fut) except -1
    int _future_unblock "mmusim_future_unblock" (object fut) except -1
    object _future_loop "mmusim_future_loop" (object fut)
    double _as_double "mmusim_as_double" (object x) except? -1.0
    unsigned long long _double_bits "mmusim_double_bits" (double x)

cdef class Trace:
    cdef public str level
    cdef public Py_ssize_t BATCH
    cdef object _hash
    cdef object _events_hash
    cdef array.array _codes
    cdef Py_ssize_t _moves
    cdef list _events
    cdef dict _code_of
    cdef dict _names
    cdef double _now
    cdef double _full_now
    cdef list _entries
    cdef Py_ssize_t _steps
    cdef public Py_ssize_t events
    cpdef unsigned long long code(self, str name) except 0
    cpdef void at(self, double now)
    cpdef void step(self, double now, str key)
    cpdef void event(self, double now, str kind, str detail)
    cpdef void _flush(self)

cdef inline int _codes_append(array.array codes, unsigned long long code) except -1:
    """``codes.append(code)``, for a trace's steps (an array of uint64s)"""
    cdef Py_ssize_t n = len(codes)
    array.resize_smart(codes, n + 1)
    codes.data.as_ulonglongs[n] = code
    return 0

cdef class _Core:
    cdef public double now
    cdef public bint stopping
    cdef public list sleepers
    cdef public long long seq
    cdef public Py_ssize_t dead
    cdef public object ready
    cdef public object ready_append
    cdef public long long tasks_made
    cdef public dict future_kwargs

cdef class _Run:
    cdef public object task
    cdef public object loop
    cdef public _Core core
    cdef public object coro
    cdef public object context
    cdef public str name
    cdef public long long seq
    cdef public unsigned long long tcode
    cdef public long long sleeping
    cdef public bint must_cancel
    cdef public object cancel_message
    cdef public Py_ssize_t cancels
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
cdef void _trace_move(Trace trace, double now)
cdef void _trace_code(array.array codes, unsigned long long code)
cdef void _trace_run(array.array codes, _Run run, Trace trace)
cpdef void _run_fifo(loop, _Core core, Trace trace, list sched)
cdef _Run _setup_task(task, loop, coro, context, str name)
cdef _new_task(loop, coro, str name, context)
cdef void _schedule_task(loop, task)

cdef class _FutureMaker:
    cdef dict kwargs

cdef dict _current_tasks
cdef object _heappush
cdef object _heappop
cdef unsigned long long _MOVED
cdef unsigned long long _EVENT
