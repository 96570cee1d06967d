# The seed's first program, as the seed wrote it but for the import of Pool and the type of
# long_time_task's parameter. Build and run it with:
#     python3 -m poolhost_build seed_pool.py && poolhost run seed_pool.wasm -n 4
from poolhost import Pool
import os, time, random

def long_time_task(name: int):
    print('Run task %s (%s)...' % (name, os.getpid()))
    start = time.time()
    time.sleep(random.random() * 3)
    end = time.time()
    print('Task %s runs %0.2f seconds.' % (name, (end - start)))

if __name__=='__main__':
    print('Parent process %s.' % os.getpid())
    p = Pool(4)
    for i in range(5):
        p.apply_async(long_time_task, args=(i,))
    print('Waiting for all subprocesses done...')
    p.close()
    p.join()
    print('All subprocesses done.')
