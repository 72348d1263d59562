# By-hand delayed-exchange lateness (pika; see bench/results.md): python late.py PORT RATE SECS DELAY_MS
# Lateness: publish at RATE/s for SECS with delay D; NQ consumers measure now - due.
import sys, time, pika, multiprocessing as mp
port=int(sys.argv[1]); rate=int(sys.argv[2]); secs=int(sys.argv[3]); delay=int(sys.argv[4]); nq=2
P=lambda: pika.ConnectionParameters("127.0.0.1",port,credentials=pika.PlainCredentials("guest","guest"))
def consumer(q,total,out):
    c=pika.BlockingConnection(P()); ch=c.channel(); ch.basic_qos(prefetch_count=2000)
    lat=[]
    for m,p,b in ch.consume(q,auto_ack=True,inactivity_timeout=delay/1000+secs+10):
        if m is None: break
        lat.append(time.time()*1000-float(b))
        if len(lat)>=total: break
    out.put(lat)
c=pika.BlockingConnection(P()); ch=c.channel()
ch.exchange_declare("lx","x-delayed-message",arguments={"x-delayed-type":"direct"})
for i in range(nq):
    ch.queue_declare("lq%d"%i); ch.queue_purge("lq%d"%i); ch.queue_bind("lq%d"%i,"lx","k%d"%i)
total=rate*secs; out=mp.Queue()
ps=[mp.Process(target=consumer,args=("lq%d"%i,total//nq,out)) for i in range(nq)]
[p.start() for p in ps]
props=pika.BasicProperties(headers={"x-delay":delay})
t0=time.time(); sent=0
while sent<total:
    target=int((time.time()-t0)*rate)+1
    while sent<min(target,total):
        due=time.time()*1000+delay
        ch.basic_publish("lx","k%d"%(sent%nq),str(due).encode(),props); sent+=1
    time.sleep(0.001)
print("publish rate",round(total/(time.time()-t0)))
lat=[]
for _ in ps: lat+=out.get()
lat.sort()
q=lambda f: round(lat[min(len(lat)-1,int(len(lat)*f))],1)
print("received",len(lat),"p50",q(.5),"p99",q(.99),"max",round(lat[-1],1),"ms")
