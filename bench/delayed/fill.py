# By-hand delayed-exchange measurements (pika; see bench/results.md): python fill.py PORT N p|t
# Publish N persistent delayed messages (far due) to a durable delayed exchange; report rate.
import sys, time, pika
port=int(sys.argv[1]); n=int(sys.argv[2]); persistent=sys.argv[3]=="p"
c=pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1",port,credentials=pika.PlainCredentials("guest","guest")))
ch=c.channel()
ch.exchange_declare("dbx","x-delayed-message",durable=True,arguments={"x-delayed-type":"direct"})
props=pika.BasicProperties(headers={"x-delay":3600000},delivery_mode=2 if persistent else 1)
body=b"x"*100
t=time.time()
for i in range(n):
    ch.basic_publish("dbx","k",body,props)
ch.exchange_declare("dbx",passive=True)
print("published",n,"in",round(time.time()-t,1),"s")
c.close()
