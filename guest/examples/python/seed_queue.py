# The seed's second program, as the seed wrote it (in English) but for the import of Manager and
# Pool and the type of the tasks' parameter. Build and run it with:
#     python3 -m poolhost_build seed_queue.py && poolhost run seed_queue.wasm
from poolhost import Manager, Pool, Queue
import os,time,random

def reader(q: Queue):
    print("reader started (%s), parent is (%s)" % (os.getpid(), os.getppid()))
    for i in range(q.qsize()):
        print("reader got message from Queue: %s" % q.get(True))

def writer(q: Queue):
    print("writer started (%s), parent is (%s)" % (os.getpid(), os.getppid()))
    for i in "itcast":
        q.put(i)

if __name__=="__main__":
    print("(%s) start" % os.getpid())
    q = Manager().Queue()  # the Queue of a Manager
    po = Pool()
    po.apply_async(writer, (q,))

    time.sleep(1)  # let the writer fill the queue before the reader takes from it

    po.apply_async(reader, (q,))
    po.close()
    po.join()
    print("(%s) End" % os.getpid())
