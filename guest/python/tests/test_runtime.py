"""The `poolhost` package a component imports, on stand-ins for the host: queues, the pool, and
how the entry module calls tasks."""

import contextlib
import io
import os
import unittest
from unittest import mock

import support  # noqa: F401, puts poolhost and the stand-ins on sys.path
import poolhost
from componentize_py_types import Err
from poolhost import Empty, Full, Manager, Pool, Queue, TaskFailed, component
from poolhost.pool import TASKS, Task
from wit_world.imports import pool as host_pool
from wit_world.imports import queue as host_queue


class Queues(unittest.TestCase):
    def setUp(self):
        host_queue.reset()

    def test_str_and_bytes_items(self):
        q = Queue("q")
        q.put("itcast")
        q.put(b"\xff")
        q.put_nowait(bytearray(b"x"))
        self.assertEqual((q.qsize(), q.empty()), (3, False))
        self.assertEqual(host_queue.QUEUES["q"], [b"itcast", b"\xff", b"x"])
        self.assertEqual(q.get(True), "itcast")
        self.assertEqual(q.get_bytes(), b"\xff")
        self.assertEqual(q.get_nowait(), "x")
        self.assertTrue(q.empty())
        with self.assertRaisesRegex(TypeError, "a queue item is str or bytes, not int"):
            q.put(1)

    def test_an_item_that_is_not_text_is_not_lost(self):
        q = Queue("q")
        q.put(b"\xff\xfe")
        with self.assertRaises(poolhost.NotText) as raised:
            q.get()
        self.assertIsInstance(raised.exception, UnicodeDecodeError)
        self.assertEqual(raised.exception.item, b"\xff\xfe")
        self.assertIn("get_bytes", str(raised.exception))

    def test_empty_and_full_as_the_standard_library_raises_them(self):
        self.assertIs(poolhost.Empty, __import__("queue").Empty)
        q = Queue("bounded")
        host_queue.MAXSIZE["bounded"] = 1
        q.put("a")
        for put in (
            lambda: q.put("b", timeout=0.1),
            lambda: q.put("b", block=False),
            lambda: q.put_nowait("b"),
        ):
            with self.assertRaises(Full):
                put()
        q.get()
        for get in (lambda: q.get(timeout=0.1), lambda: q.get(False), q.get_nowait, q.get_bytes):
            with self.assertRaises(Empty):
                get()
        for bad in (-1, float("nan")):
            with self.assertRaisesRegex(ValueError, "'timeout' must be a non-negative number"):
                q.get(timeout=bad)
        # An infinite timeout waits as long as it takes, as no timeout does.
        self.assertIsNone(poolhost.queues.nanos(float("inf")))

    def test_other_errors(self):
        with self.assertRaisesRegex(
            poolhost.InvalidQueueName, "queue '': a queue name has 1 to 255 bytes"
        ):
            Queue("")
        q = Queue("q")
        with self.assertRaises(poolhost.ItemTooLarge):
            q.put("x" * 17)
        host_queue.CLOSED = True
        with self.assertRaisesRegex(poolhost.QueueClosed, "queue 'q': the pool is shutting down"):
            q.get()

    def test_manager_queues_have_fresh_names(self):
        with Manager() as manager:
            a, b = manager.Queue(), manager.Queue()
        self.assertNotEqual(a.name, b.name)
        self.assertRegex(a.name, "^manager-[0-9a-f]{16}$")
        self.assertEqual(repr(a), f"Queue({a.name!r})")


def add(a: int, b: int = 10) -> int: ...
def echo(values: list[str], q: Queue) -> None: ...
def nested(): ...


class Pools(unittest.TestCase):
    def setUp(self):
        host_queue.reset()
        TASKS.update(
            add=Task("add", ("s64", "s64"), "s64"),
            echo=Task("echo", (("list", "string"), "queue"), None),
        )
        self.addCleanup(TASKS.clear)

    def host(self, handler):
        host_pool.reset(handler)
        return Pool()

    def test_arguments_go_as_wave_and_results_come_back_as_values(self):
        pool = self.host(lambda function, args: "3" if function == "add" else None)
        self.assertEqual(pool.apply(add, (1, 2)), 3)
        self.assertEqual(pool.apply_async(add, (5,)).get(), 3)
        self.assertEqual(pool.apply(add, (), {"a": 1, "b": -2}), 3)
        self.assertIsNone(pool.apply(echo, (['a"b'], Queue("q"))))
        self.assertEqual(pool.map(add, range(2)), [3, 3])
        self.assertEqual(pool.starmap(add, [(1, 2)]), [3])
        self.assertEqual(pool.map(add, []), [])
        self.assertEqual(
            host_pool.CALLS,
            [
                ("add", "1, 2"),
                ("add", "5, 10"),
                ("add", "1, -2"),
                ("echo", '["a\\"b"], "q"'),
                ("add", "0, 10"),
                ("add", "1, 10"),
                ("add", "1, 2"),
            ],
        )

    def test_calls_that_do_not_fit(self):
        pool = self.host(lambda function, args: "0")
        with self.assertRaisesRegex(TypeError, r"add\(\): argument 'b': expected int, got 'x'"):
            pool.apply(add, (1, "x"))
        with self.assertRaisesRegex(TypeError, "too many positional arguments"):
            pool.apply_async(add, (1, 2, 3))
        imposter = lambda: 0  # noqa: E731, a function called `add` of another module
        imposter.__name__ = imposter.__qualname__ = "add"
        imposter.__module__ = "helpers"
        for func in (print, lambda: 0, nested, imposter):
            with (
                self.subTest(func=func),
                self.assertRaisesRegex(
                    TypeError,
                    r"is not a task of this component; its tasks are its public top-level "
                    r"functions: add, echo",
                ),
            ):
                pool.apply(func)
        self.assertEqual(host_pool.CALLS, [])

    def test_failures(self):
        def handler(function, args):
            match args:
                case "1, 10":
                    raise Err(
                        host_pool.Error_Failed(host_pool.Failure("exit", "exited with code 1"))
                    )
                case "2, 10":
                    raise Err(host_pool.Error_Timeout())
                case "3, 10":
                    raise Err(host_pool.Error_BadCall("no export named `add`"))
                case "4, 10":
                    raise Err(host_pool.Error_NotDriver())
            return "0"

        pool = self.host(handler)
        failed = pool.apply_async(add, (1,))
        self.assertFalse(failed.successful())
        with self.assertRaises(TaskFailed) as caught:
            failed.get()
        self.assertEqual(
            (caught.exception.kind, caught.exception.message, str(caught.exception)),
            ("exit", "exited with code 1", "exit: exited with code 1"),
        )
        with self.assertRaises(TimeoutError):
            pool.apply_async(add, (2,)).get(timeout=0.5)
        with self.assertRaisesRegex(TypeError, "no export named `add`"):
            pool.apply(add, (3,))
        with self.assertRaisesRegex(RuntimeError, "only the driver has a pool"):
            pool.apply(add, (4,))
        with self.assertRaisesRegex(TaskFailed, "exit"):
            pool.map(add, [0, 1, 2])

    def test_lifecycle(self):
        with self.host(lambda function, args: "0") as pool:
            with self.assertRaisesRegex(ValueError, "Pool is still running"):
                pool.join()
            pool.close()
            with self.assertRaisesRegex(ValueError, "Pool not running"):
                pool.apply_async(add, (1,))
            pool.join()
        with self.assertRaisesRegex(ValueError, "Number of processes must be at least 1"):
            Pool(0)

    def test_a_size_other_than_the_pools_is_noted(self):
        host_pool.reset(None)
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            Pool(2)
            Pool()
            Pool(4)
        self.assertEqual(
            stderr.getvalue(), "poolhost: Pool(4) has 2 workers: `poolhost run -n` sets its size\n"
        )


class EntryModule(unittest.TestCase):
    def setUp(self):
        host_queue.reset()
        self.addCleanup(TASKS.clear)
        patch = mock.patch.multiple(os, getpid=os.getpid, getppid=os.getppid)
        patch.start()
        self.addCleanup(patch.stop)

    def test_setup_registers_tasks_and_gives_os_the_pools_pids(self):
        component.setup(__import__(__name__), {"add": ("add", ("s64", "s64"), "s64")})
        self.assertEqual(TASKS["add"], Task("add", ("s64", "s64"), "s64"))
        self.assertEqual((os.getpid(), os.getppid()), (4122, 4121))

    def test_a_queue_parameter_arrives_as_a_queue(self):
        received = []
        module = mock.Mock(
            spec=["__file__", "__name__", "writer"],
            __file__=__file__,
            __name__="app",
            writer=lambda q, n: received.append((q, n)),
        )
        component.setup(module, {"writer": ("writer", ("queue", "s64"), None)})
        component.call(module, "writer", ("jobs", 3))
        [(q, n)] = received
        self.assertEqual((type(q), q.name, n), (Queue, "jobs", 3))

    def test_an_exception_is_printed_and_ends_the_task_with_exit_code_1(self):
        def fail():
            raise RuntimeError("boom")

        module = mock.Mock(
            spec=["__file__", "__name__", "fail"], __file__=__file__, __name__="app", fail=fail
        )
        component.setup(module, {"fail": ("fail", (), None)})
        stderr = io.StringIO()
        with (
            contextlib.redirect_stderr(stderr),
            mock.patch("os._exit", side_effect=SystemExit) as exit,
        ):
            with self.assertRaises(SystemExit):
                component.call(module, "fail", ())
        exit.assert_called_once_with(1)
        self.assertNotIn("component.py", stderr.getvalue())
        self.assertIn(
            'in fail\n    raise RuntimeError("boom")\nRuntimeError: boom\n', stderr.getvalue()
        )

    def test_the_driver_runs_as_main_and_an_exception_ends_it_with_an_error(self):
        module = mock.Mock(__file__="app.py")
        code = compile("if __name__ == '__main__':\n    raise ValueError(42)\n", "app.py", "exec")
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), self.assertRaises(Err):
            component.run_main(module, code, call_main=False)
        self.assertTrue(stderr.getvalue().endswith("ValueError: 42\n"))
        ran = compile("def main():\n    print('main ran')\n", "app.py", "exec")
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            component.run_main(module, ran, call_main=True)
        self.assertEqual(stdout.getvalue(), "main ran\n")


if __name__ == "__main__":
    unittest.main()
