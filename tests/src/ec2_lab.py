#!/usr/bin/env python3
"""The lab's EC2: moto's server with what moto lacks put in front of it.

moto implements the ENI calls but enforces neither subnet capacity nor address uniqueness,
never throttles and answers AssignPrivateIpAddresses with every address of the ENI. The proxy
(`proxy`) forwards each call to moto and:
  - injects RequestLimitExceeded at a configured rate, latency, and outages (503 Unavailable);
  - refuses an assignment past the subnet's capacity (InsufficientFreeAddressesInSubnet) and
    answers DescribeSubnets with the capacity left;
  - never hands out an address another ENI holds, nor one EC2 reserves (the subnet's first four
    and its last: moto picks at random among all; the proxy draws again),
    refuses a named address held elsewhere unless AllowReassignment, and then moves it;
  - answers AssignPrivateIpAddresses with the new addresses only, as EC2 does;
  - counts the calls by action.
Faults are set at run time: POST /__lab/faults {"throttle": 0.3, "latency_ms": 50, "down": false,
"capacity": 12}; GET /__lab/calls gives the counts.

Python, run from the tests' venv, because moto and boto3 are there already: the proxy reads
moto's state through boto3 instead of a second EC2 client. `seed`, `seed-lab`, `describe` and
`create-eni` set the lab up and read it for the tests (tests/src/ec2.rs).
"""

import argparse
import ipaddress
import json
import random
import re
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3

REGION = "us-east-1"
XMLNS = "http://ec2.amazonaws.com/doc/2016-11-15/"


def ec2(endpoint):
    return boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="lab",
        aws_secret_access_key="lab",
    )


def error_xml(code, message):
    return (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error>'
        f"<Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        "<RequestID>lab</RequestID></Response>"
    ).encode()


class Refused(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Lab:
    def __init__(self, upstream):
        self.upstream = upstream
        self.ec2 = ec2(upstream)
        self.faults = {"throttle": 0.0, "latency_ms": 0, "down": False, "capacity": None}
        self.calls = {}
        # Calls that change addresses run one at a time: check, forward and fix up together.
        self.lock = threading.Lock()

    def forward(self, body, headers):
        request = urllib.request.Request(self.upstream + "/", data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def enis(self, **filters):
        flt = [{"Name": k.replace("_", "-"), "Values": [v]} for k, v in filters.items()]
        return self.ec2.describe_network_interfaces(Filters=flt)["NetworkInterfaces"]

    def used(self, subnet_id):
        """(address, ENI) of every address in the subnet."""
        return [
            (a["PrivateIpAddress"], e["NetworkInterfaceId"])
            for e in self.enis(subnet_id=subnet_id)
            for a in e["PrivateIpAddresses"]
        ]

    def reserved(self, subnet_id):
        """The addresses EC2 never hands out in a subnet."""
        cidr = self.ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"][0]["CidrBlock"]
        net = ipaddress.ip_network(cidr)
        return {str(net.network_address + i) for i in range(4)} | {str(net.broadcast_address)}

    def addresses(self, eni_id):
        eni = self.ec2.describe_network_interfaces(NetworkInterfaceIds=[eni_id])["NetworkInterfaces"][0]
        return eni["SubnetId"], [a["PrivateIpAddress"] for a in eni["PrivateIpAddresses"]]

    def check_capacity(self, used, more):
        capacity = self.faults["capacity"]
        if capacity is not None and len(used) + more > capacity:
            raise Refused(
                400,
                "InsufficientFreeAddressesInSubnet",
                f"There are not enough free addresses in subnet to satisfy the requested number of"
                f" instances ({len(used)} of {capacity} in use).",
            )

    def assign(self, params, body, headers):
        eni_id = params["NetworkInterfaceId"]
        subnet, before = self.addresses(eni_id)
        used = self.used(subnet)
        named = [v for k, v in sorted(params.items()) if k.startswith("PrivateIpAddress.")]
        if named:
            holders = [(ip, eni) for ip, eni in used if ip in named and eni != eni_id]
            if holders and params.get("AllowReassignment") != "true":
                raise Refused(400, "InvalidParameterValue", f"Address {holders[0][0]} is in use.")
            self.check_capacity(used, len([ip for ip in named if ip not in [u for u, _ in used]]))
            for ip, eni in holders:
                self.ec2.unassign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=[ip])
            status, reply = self.forward(body, headers)
            return status, reply if status != 200 else assigned_xml(eni_id, named)
        count = int(params.get("SecondaryPrivateIpAddressCount", "1"))
        self.check_capacity(used, count)
        status, reply = self.forward(body, headers)
        if status != 200:
            return status, reply
        taken = {ip for ip, _ in used} | self.reserved(subnet)
        new = [ip for ip in self.addresses(eni_id)[1] if ip not in before]
        for i, ip in enumerate(new):
            # moto drew an address another ENI holds: give it back and draw again.
            while ip in taken:
                self.ec2.unassign_private_ip_addresses(NetworkInterfaceId=eni_id, PrivateIpAddresses=[ip])
                held = set(self.addresses(eni_id)[1])
                self.ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id, SecondaryPrivateIpAddressCount=1)
                ip = next(a for a in self.addresses(eni_id)[1] if a not in held)
            new[i] = ip
            taken.add(ip)
        return 200, assigned_xml(eni_id, new)

    def create_eni(self, params, body, headers):
        used = self.used(params["SubnetId"])
        self.check_capacity(used, 1 + int(params.get("SecondaryPrivateIpAddressCount", "0")))
        taken = {ip for ip, _ in used} | self.reserved(params["SubnetId"])
        for _ in range(50):
            status, reply = self.forward(body, headers)
            if status != 200:
                return status, reply
            eni_id = re.search(rb"<networkInterfaceId>([^<]+)<", reply).group(1).decode()
            primary = re.search(rb"<privateIpAddress>([^<]+)<", reply).group(1).decode()
            if primary not in taken:
                return status, reply
            self.ec2.delete_network_interface(NetworkInterfaceId=eni_id)
        raise Refused(500, "InternalError", "no unique primary address after 50 draws")

    def describe_subnets(self, params, body, headers):
        status, reply = self.forward(body, headers)
        capacity = self.faults["capacity"]
        if status != 200 or capacity is None or "SubnetId.1" not in params:
            return status, reply
        free = max(0, capacity - len(self.used(params["SubnetId.1"])))
        return status, re.sub(
            rb"<availableIpAddressCount>\d+</availableIpAddressCount>",
            f"<availableIpAddressCount>{free}</availableIpAddressCount>".encode(),
            reply,
        )

    def handle(self, body, headers):
        params = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode(), keep_blank_values=True).items()}
        action = params.get("Action", "?")
        self.calls[action] = self.calls.get(action, 0) + 1
        faults = dict(self.faults)
        if faults["latency_ms"]:
            time.sleep(faults["latency_ms"] / 1000)
        if faults["down"]:
            raise Refused(503, "Unavailable", "The service is unavailable. Please try again shortly.")
        if random.random() < faults["throttle"]:
            raise Refused(503, "RequestLimitExceeded", "Request limit exceeded.")
        special = {
            "AssignPrivateIpAddresses": self.assign,
            "CreateNetworkInterface": self.create_eni,
            "DescribeSubnets": self.describe_subnets,
        }.get(action)
        if special is None:
            return self.forward(body, headers)
        with self.lock:
            return special(params, body, headers)


def assigned_xml(eni_id, addresses):
    items = "".join(f"<item><privateIpAddress>{ip}</privateIpAddress></item>" for ip in addresses)
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><AssignPrivateIpAddressesResponse xmlns="{XMLNS}">'
        f"<requestId>lab</requestId><networkInterfaceId>{eni_id}</networkInterfaceId>"
        f"<assignedPrivateIpAddressesSet>{items}</assignedPrivateIpAddressesSet>"
        "</AssignPrivateIpAddressesResponse>"
    ).encode()


def serve(listen, upstream, tls_cert=None, tls_key=None):
    lab = Lab(upstream)

    class Handler(BaseHTTPRequestHandler):
        def reply(self, status, body, kind="text/xml"):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/__lab/calls":
                return self.reply(200, json.dumps(lab.calls).encode(), "application/json")
            self.reply(404, b"")

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path == "/__lab/faults":
                lab.faults.update(json.loads(body))
                return self.reply(200, json.dumps(lab.faults).encode(), "application/json")
            keep = ("Content-Type", "Authorization", "X-Amz-Date", "X-Amz-Security-Token")
            headers = {k: self.headers[k] for k in keep if self.headers.get(k)}
            try:
                status, reply = lab.handle(body, headers)
            except Refused as e:
                status, reply = e.status, error_xml(e.code, e.message)
            self.reply(status, reply)

        def log_message(self, *args):
            pass

    host, port = listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Handler)
    if tls_cert:
        # https:// for the tests of the providers' TLS (vswitch/tests/provider_tls.rs). A client
        # that refuses the certificate fails its accept (an OSError the server shrugs off).
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls_cert, tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()


def seed(endpoint, cidr, subnet_cidr, instance_type, count):
    client = ec2(endpoint)
    vpc = client.create_vpc(CidrBlock=cidr)["Vpc"]["VpcId"]
    subnet = client.create_subnet(VpcId=vpc, CidrBlock=subnet_cidr)["Subnet"]["SubnetId"]
    image = client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    reply = client.run_instances(
        ImageId=image, MinCount=count, MaxCount=count, InstanceType=instance_type, SubnetId=subnet
    )
    instances = [i["InstanceId"] for i in reply["Instances"]]
    print(json.dumps({"vpc": vpc, "subnet": subnet, "instances": instances}))


def seed_lab(endpoint, spec):
    """The lab VPC as EC2 sees it (`vpc-lab --vpc aws`): the VPC and one subnet with the lab's
    CIDR, and each host of `spec["hosts"]` ({"name", "ip", "kind": "instance" | "eni"}) as an
    instance of `spec["instance_type"]` whose primary ENI has that address, or a bare ENI (the
    load balancer's, as an NLB's ENI is one). Prints each host's instance, ENI and MAC."""
    client = ec2(endpoint)
    vpc = client.create_vpc(CidrBlock=spec["cidr"])["Vpc"]["VpcId"]
    subnet = client.create_subnet(VpcId=vpc, CidrBlock=spec["cidr"])["Subnet"]["SubnetId"]
    image = client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    hosts = {}
    for host in spec["hosts"]:
        if host["kind"] == "instance":
            reply = client.run_instances(
                ImageId=image,
                MinCount=1,
                MaxCount=1,
                InstanceType=spec["instance_type"],
                SubnetId=subnet,
                PrivateIpAddress=host["ip"],
                TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": host["name"]}]}],
            )
            instance = reply["Instances"][0]
            eni = instance["NetworkInterfaces"][0]
            hosts[host["name"]] = {"instance": instance["InstanceId"], "eni": eni["NetworkInterfaceId"]}
        else:
            eni = client.create_network_interface(
                SubnetId=subnet, PrivateIpAddress=host["ip"], Description=host["name"]
            )["NetworkInterface"]
            hosts[host["name"]] = {"instance": None, "eni": eni["NetworkInterfaceId"]}
        described = client.describe_network_interfaces(NetworkInterfaceIds=[hosts[host["name"]]["eni"]])
        eni = described["NetworkInterfaces"][0]
        assert eni["PrivateIpAddress"] == host["ip"], (host, eni["PrivateIpAddress"])
        hosts[host["name"]]["mac"] = eni["MacAddress"]
    print(json.dumps({"vpc": vpc, "subnet": subnet, "hosts": hosts}))


def describe(endpoint):
    enis = []
    for e in ec2(endpoint).describe_network_interfaces()["NetworkInterfaces"]:
        attachment = e.get("Attachment") or {}
        enis.append({
            "id": e["NetworkInterfaceId"],
            "status": e["Status"],
            "subnet": e["SubnetId"],
            "instance": attachment.get("InstanceId"),
            "device_index": attachment.get("DeviceIndex"),
            "primary": [a["PrivateIpAddress"] for a in e["PrivateIpAddresses"] if a.get("Primary")],
            "secondary": [a["PrivateIpAddress"] for a in e["PrivateIpAddresses"] if not a.get("Primary")],
            "tags": {t["Key"]: t["Value"] for t in e.get("TagSet", [])},
        })
    print(json.dumps(enis))


def assign(endpoint, eni, ip):
    """`ip` on `eni`, as moto alone allows it: even if another ENI holds it (a duplicate)."""
    ec2(endpoint).assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=[ip])
    print(json.dumps({"eni": eni, "ip": ip}))


def create_eni(endpoint, subnet, tags):
    spec = [{"ResourceType": "network-interface", "Tags": [{"Key": k, "Value": v} for k, v in tags]}]
    eni = ec2(endpoint).create_network_interface(SubnetId=subnet, TagSpecifications=spec)
    print(eni["NetworkInterface"]["NetworkInterfaceId"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("proxy")
    p.add_argument("--listen", required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--tls-cert", help="serve https:// with this PEM certificate chain")
    p.add_argument("--tls-key", help="and this PEM key")
    p = sub.add_parser("seed")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--cidr", default="10.0.0.0/16")
    p.add_argument("--subnet-cidr", default="10.0.1.0/24")
    p.add_argument("--instance-type", default="t3.small")
    p.add_argument("--count", type=int, default=1)
    p = sub.add_parser("seed-lab")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--spec", required=True, help="JSON: cidr, instance_type, hosts")
    p = sub.add_parser("describe")
    p.add_argument("--endpoint", required=True)
    p = sub.add_parser("assign")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--eni", required=True)
    p.add_argument("--ip", required=True)
    p = sub.add_parser("create-eni")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--subnet", required=True)
    p.add_argument("--tag", action="append", default=[], help="KEY=VALUE")
    args = parser.parse_args()
    if args.command == "proxy":
        serve(args.listen, args.upstream, args.tls_cert, args.tls_key)
    elif args.command == "seed":
        seed(args.endpoint, args.cidr, args.subnet_cidr, args.instance_type, args.count)
    elif args.command == "seed-lab":
        seed_lab(args.endpoint, json.loads(args.spec))
    elif args.command == "describe":
        describe(args.endpoint)
    elif args.command == "assign":
        assign(args.endpoint, args.eni, args.ip)
    else:
        create_eni(args.endpoint, args.subnet, [t.split("=", 1) for t in args.tag])


if __name__ == "__main__":
    sys.exit(main())
