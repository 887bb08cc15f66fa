"""Drives the vpc-sim emulator with Tencent Cloud's official Python SDK
through a full ENI lifecycle, checks that a request signed with the wrong
key is refused, and signs with the temporary credentials of the instance's
CAM role (from the emulator's metadata service) as a CVM instance would.
Usage: vpc_lifecycle.py ADDRESS SECRET_ID SECRET_KEY
"""
import json
import sys
import urllib.request

from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.vpc.v20170312 import models, vpc_client

address, secret_id, secret_key = sys.argv[1:4]
profile = ClientProfile(httpProfile=HttpProfile(endpoint=address, protocol="http"))


def client(key):
    return vpc_client.VpcClient(credential.Credential(secret_id, key), "sim-region-1", profile)


vpc = client(secret_key)


def call(action, params):
    request = getattr(models, action + "Request")()
    request.from_json_string(json.dumps(params))
    return json.loads(getattr(vpc, action)(request).to_json_string())


def expect_error(code, action, params):
    try:
        call(action, params)
    except TencentCloudSDKException as e:
        assert e.get_code() == code, (action, e.get_code(), code)
        return
    raise AssertionError(f"{action} should fail with {code}")


subnets = call("DescribeSubnets", {"Filters": [{"Name": "zone", "Values": ["sim-zone-1"]}]})["SubnetSet"]
assert len(subnets) == 1, subnets
subnet = subnets[0]["SubnetId"]
limit = call("DescribeNetworkInterfaceLimit", {"InstanceId": "ins-sim0001"})
assert limit["EniQuantity"] >= 1 and limit["EniPrivateIpAddressQuantity"] >= 2, limit

eni = call("CreateNetworkInterface", {
    "VpcId": "vpc-sim0001", "SubnetId": subnet, "NetworkInterfaceName": "sdk",
    "SecondaryPrivateIpAddressCount": 1, "Tags": [{"Key": "vpc-cni/cluster", "Value": "sdk"}],
    "ClientToken": "sdk-create-1",
})["NetworkInterface"]
eni_id = eni["NetworkInterfaceId"]
again = call("CreateNetworkInterface", {
    "VpcId": "vpc-sim0001", "SubnetId": subnet, "NetworkInterfaceName": "sdk",
    "SecondaryPrivateIpAddressCount": 1, "ClientToken": "sdk-create-1",
})["NetworkInterface"]
assert again["NetworkInterfaceId"] == eni_id, "a retried create with its ClientToken creates nothing new"

task = call("AttachNetworkInterface", {"NetworkInterfaceId": eni_id, "InstanceId": "ins-sim0001"})["RequestId"]
assert call("DescribeVpcTaskResult", {"TaskId": task})["Status"] == "SUCCESS"
assigned = call("AssignPrivateIpAddresses", {"NetworkInterfaceId": eni_id, "SecondaryPrivateIpAddressCount": 2})
ips = [a["PrivateIpAddress"] for a in assigned["PrivateIpAddressSet"]]
assert len(ips) == 2, assigned

found = call("DescribeNetworkInterfaces", {"Filters": [
    {"Name": "attachment.instance-id", "Values": ["ins-sim0001"]},
    {"Name": "tag:vpc-cni/cluster", "Values": ["sdk"]},
]})
assert found["TotalCount"] == 1 and found["NetworkInterfaceSet"][0]["NetworkInterfaceId"] == eni_id, found
held = [a["PrivateIpAddress"] for a in found["NetworkInterfaceSet"][0]["PrivateIpAddressSet"]]
assert set(ips) <= set(held), (ips, held)

other = call("CreateNetworkInterface", {"VpcId": "vpc-sim0001", "SubnetId": subnet, "NetworkInterfaceName": "dst"})
other_id = other["NetworkInterface"]["NetworkInterfaceId"]
call("AttachNetworkInterface", {"NetworkInterfaceId": other_id, "InstanceId": "ins-sim0002"})
call("MigratePrivateIpAddress", {"SourceNetworkInterfaceId": eni_id, "DestinationNetworkInterfaceId": other_id, "PrivateIpAddress": ips[0]})
moved = call("DescribeNetworkInterfaces", {"NetworkInterfaceIds": [other_id]})["NetworkInterfaceSet"][0]
assert ips[0] in [a["PrivateIpAddress"] for a in moved["PrivateIpAddressSet"]], moved

call("UnassignPrivateIpAddresses", {"NetworkInterfaceId": eni_id, "PrivateIpAddresses": [{"PrivateIpAddress": ips[1]}]})
expect_error("UnsupportedOperation.InvalidState", "DeleteNetworkInterface", {"NetworkInterfaceId": eni_id})
call("DetachNetworkInterface", {"NetworkInterfaceId": eni_id, "InstanceId": "ins-sim0001"})
call("DeleteNetworkInterface", {"NetworkInterfaceId": eni_id})
assert call("DescribeNetworkInterfaces", {"NetworkInterfaceIds": [eni_id]})["TotalCount"] == 0
expect_error("ResourceNotFound", "DeleteNetworkInterface", {"NetworkInterfaceId": eni_id})

try:
    client(secret_key + "-wrong").DescribeSubnets(models.DescribeSubnetsRequest())
    raise AssertionError("a request signed with the wrong key was accepted")
except TencentCloudSDKException as e:
    assert e.get_code() == "AuthFailure.SignatureFailure", e.get_code()

# The instance's CAM role, as CVM's metadata service serves it.
meta = f"http://{address}/ins-sim0001/latest/meta-data/cam/security-credentials/"
role = urllib.request.urlopen(meta).read().decode().strip()
tmp = json.loads(urllib.request.urlopen(meta + role).read())
assert tmp["Code"] == "Success" and tmp["ExpiredTime"] > 0, tmp
temporary = vpc_client.VpcClient(
    credential.Credential(tmp["TmpSecretId"], tmp["TmpSecretKey"], tmp["Token"]), "sim-region-1", profile)
assert temporary.DescribeSubnets(models.DescribeSubnetsRequest()).TotalCount >= 1
try:
    vpc_client.VpcClient(
        credential.Credential(tmp["TmpSecretId"], tmp["TmpSecretKey"], "not-the-token"), "sim-region-1", profile,
    ).DescribeSubnets(models.DescribeSubnetsRequest())
    raise AssertionError("temporary credentials with a wrong token were accepted")
except TencentCloudSDKException as e:
    assert e.get_code() == "AuthFailure.TokenFailure", e.get_code()

# IPv6: a block for the VPC, a /64 of it for the subnet, addresses for an ENI.
vpcs = call("DescribeVpcs", {"VpcIds": ["vpc-sim0001"]})["VpcSet"]
assert vpcs[0]["Ipv6CidrBlock"] == "" and vpcs[0]["Ipv6CidrBlockSet"] == [], vpcs
block = call("AssignIpv6CidrBlock", {"VpcId": "vpc-sim0001"})["Ipv6CidrBlock"]
assert block.endswith("/56"), block
expect_error("LimitExceeded.CidrBlock", "AssignIpv6CidrBlock", {"VpcId": "vpc-sim0001"})
assert call("DescribeVpcs", {})["VpcSet"][0]["Ipv6CidrBlockSet"][0]["IPv6CidrBlock"] == block
prefix = block.split("::")[0]
sixty_four = prefix[:-2] + "01::/64"
expect_error("UnsupportedOperation.UnassignCidrBlock", "AssignIpv6Addresses", {
    "NetworkInterfaceId": other_id, "Ipv6AddressCount": 1})
sub = call("AssignIpv6SubnetCidrBlock", {
    "VpcId": "vpc-sim0001", "Ipv6SubnetCidrBlocks": [{"SubnetId": subnet, "Ipv6CidrBlock": sixty_four}],
})["Ipv6SubnetCidrBlockSet"]
assert sub == [{"SubnetId": subnet, "Ipv6CidrBlock": sixty_four}], sub
expect_error("LimitExceeded.SubnetCidrBlock", "AssignIpv6SubnetCidrBlock", {
    "VpcId": "vpc-sim0001", "Ipv6SubnetCidrBlocks": [{"SubnetId": subnet, "Ipv6CidrBlock": sixty_four}],
})
shown = call("DescribeSubnets", {"SubnetIds": [subnet]})["SubnetSet"][0]
assert shown["Ipv6CidrBlock"] == sixty_four, shown
v6 = call("AssignIpv6Addresses", {"NetworkInterfaceId": other_id, "Ipv6AddressCount": 2})
assert [a["State"] for a in v6["Ipv6AddressSet"]] == ["PENDING", "PENDING"], v6
assert call("DescribeVpcTaskResult", {"TaskId": v6["RequestId"]})["Status"] == "SUCCESS"
got = [a["Address"] for a in v6["Ipv6AddressSet"]]
named = sixty_four.split("::")[0] + "::99"
call("AssignIpv6Addresses", {"NetworkInterfaceId": other_id, "Ipv6Addresses": [{"Address": named}]})
expect_error("ResourceInUse.Address", "AssignIpv6Addresses", {
    "NetworkInterfaceId": other_id, "Ipv6Addresses": [{"Address": named}]})
expect_error("InvalidParameterValue.Range", "AssignIpv6Addresses", {
    "NetworkInterfaceId": other_id, "Ipv6Addresses": [{"Address": prefix[:-2] + "02::5"}]})
seen = call("DescribeNetworkInterfaces", {"Filters": [{"Name": "address-ipv6", "Values": [named]}]})
assert seen["TotalCount"] == 1, seen
held6 = [a["Address"] for a in seen["NetworkInterfaceSet"][0]["Ipv6AddressSet"]]
assert set(got + [named]) == set(held6), (got, named, held6)
assert all(a["State"] == "AVAILABLE" and not a["Primary"] for a in seen["NetworkInterfaceSet"][0]["Ipv6AddressSet"])
call("UnassignIpv6Addresses", {"NetworkInterfaceId": other_id, "Ipv6Addresses": [{"Address": named}]})
expect_error("UnsupportedOperation.AttachmentNotFound", "UnassignIpv6Addresses", {
    "NetworkInterfaceId": other_id, "Ipv6Addresses": [{"Address": named}]})
created = call("CreateNetworkInterface", {
    "VpcId": "vpc-sim0001", "SubnetId": subnet, "NetworkInterfaceName": "v6b", "Ipv6AddressCount": 1,
})["NetworkInterface"]
assert len(created["Ipv6AddressSet"]) == 1, created

print("sdk lifecycle: ok")
