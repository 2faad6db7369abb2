"""One call to a UCloud VPC API through UCloud's own Python SDK (ucloud-sdk-python3), as the
lab's tests make them: argv is the client's setup (JSON: base_url, region, project_id,
public_key, private_key), the action, and its parameters (JSON). Prints one JSON line:
{"ret_code": 0, "message": "", "response": {...}} or the RetCode and message the SDK raised."""

import json
import logging
import sys

from ucloud.client import Client
from ucloud.core import exc

# The SDK's typed methods, so that its request schemas (required fields, encoding) apply.
METHODS = {
    "AllocateSecondaryIp": "allocate_secondary_ip",
    "DeleteSecondaryIp": "delete_secondary_ip",
    "DescribeSecondaryIp": "describe_secondary_ip",
    "MoveSecondaryIPMac": "move_secondary_ip_mac",
    "DescribeSubnet": "describe_subnet",
}


def main():
    setup, action, params = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    logging.getLogger("ucloud").setLevel(logging.CRITICAL)
    client = Client(dict(setup, max_retries=0, timeout=10, log_level=logging.CRITICAL))
    vpc = client.vpc()
    vpc.logger.setLevel(logging.CRITICAL)
    try:
        method = METHODS.get(action)
        response = getattr(vpc, method)(params) if method else vpc.invoke(action, params)
        print(json.dumps({"ret_code": 0, "message": "", "response": response}))
    except exc.RetCodeException as e:
        print(json.dumps({"ret_code": e.code, "message": e.message, "response": None}))
    except Exception as e:  # transport failures: the API down, refused, timed out
        print(json.dumps({"ret_code": -1, "message": "%s: %s" % (type(e).__name__, e), "response": None}))


if __name__ == "__main__":
    main()
