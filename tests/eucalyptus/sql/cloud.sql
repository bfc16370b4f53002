-- SPDX-License-Identifier: Apache-2.0
-- Eucalyptus CLC (eucalyptus_cloud) tables used by the inventory, Hibernate-style DDL with the
-- AbstractPersistent base columns, and rows for: a running EBS instance (boot volume + two data
-- volumes attached out of device order), a stopped EBS instance, a terminated instance-store
-- instance, an unattached volume restored from a snapshot, and a deleted volume.

CREATE TABLE cloud_vm_type (
    id varchar(255) PRIMARY KEY,
    version int4,
    creation_timestamp timestamp,
    last_update_timestamp timestamp,
    metadata_perm_uuid varchar(255) UNIQUE NOT NULL,
    config_vm_type_name varchar(255) UNIQUE NOT NULL,
    config_vm_type_cpu int4,
    config_vm_type_disk int4,
    config_vm_type_memory int4
);

CREATE TABLE metadata_instances (
    id varchar(255) PRIMARY KEY,
    version int4,
    creation_timestamp timestamp,
    last_update_timestamp timestamp,
    metadata_perm_uuid varchar(255) UNIQUE NOT NULL,
    metadata_account_id varchar(255),
    metadata_user_id varchar(255),
    metadata_display_name varchar(255),
    metadata_state varchar(255),
    metadata_vm_type_id varchar(255) REFERENCES cloud_vm_type(id),
    metadata_vm_machine_image_id varchar(255),
    metadata_vm_kernel_image_id varchar(255),
    metadata_vm_ramdisk_image_id varchar(255),
    metadata_vm_virtualization_type varchar(255),
    metadata_vm_platform varchar(255),
    metadata_vm_architecture varchar(255),
    metadata_vm_partition_name varchar(255),
    metadata_vm_cluster_name varchar(255),
    metadata_vm_service_tag varchar(255),
    metadata_vm_sshkey text,
    metadata_vm_user_data bytea,
    -- Embedded VmNetworkConfig (Eucalyptus 4.x compute-common/.../internal/vm/VmNetworkConfig.java,
    -- maint-4.0 cluster-manager/.../vm/VmNetworkConfig.java): @Column names as written there.
    -- metadata_vm_sshkey / metadata_vm_user_data above are VmBootRecord's, metadata_vm_service_tag
    -- VmRuntimeState's; no release has a key-name column (the name is the key's comment).
    metadata_vm_private_addressing bool,
    metadata_vm_mac_address varchar(255),
    metadata_vm_private_address varchar(255),
    metadata_vm_public_address varchar(255),
    metadata_vm_private_dns varchar(255),
    metadata_vm_public_dns varchar(255)
);

CREATE TABLE metadata_instances_persistent_volumes (
    vminstance_id varchar(255) NOT NULL REFERENCES metadata_instances(id),
    metadata_vm_volume_id varchar(255),
    metadata_vm_volume_device varchar(255),
    metadata_vm_volume_remote_device varchar(4096),
    metadata_vm_volume_is_root_device bool,
    metadata_vm_vol_delete_on_terminate bool,
    metadata_vm_volume_status varchar(255),
    metadata_vm_volume_attach_time timestamp
);

CREATE TABLE metadata_instances_volume_attachments (
    vminstance_id varchar(255) NOT NULL REFERENCES metadata_instances(id),
    metadata_vm_volume_id varchar(255),
    metadata_vm_volume_device varchar(255),
    metadata_vm_volume_remote_device varchar(4096),
    metadata_vm_volume_is_root_device bool,
    metadata_vm_vol_delete_on_terminate bool,
    metadata_vm_volume_status varchar(255),
    metadata_vm_volume_attach_time timestamp
);

CREATE TABLE metadata_volumes (
    id varchar(255) PRIMARY KEY,
    version int4,
    creation_timestamp timestamp,
    last_update_timestamp timestamp,
    metadata_perm_uuid varchar(255) UNIQUE NOT NULL,
    metadata_account_id varchar(255),
    metadata_user_id varchar(255),
    metadata_display_name varchar(255),
    metadata_state varchar(255),
    metadata_volume_size int4,
    metadata_volume_partition varchar(255),
    metadata_volume_sc_name varchar(255),
    metadata_volume_parentsnapshot varchar(255),
    metadata_volume_remotedevice varchar(255),
    metadata_volume_localdevice varchar(255)
);

CREATE TABLE metadata_snapshots (
    id varchar(255) PRIMARY KEY,
    version int4,
    creation_timestamp timestamp,
    last_update_timestamp timestamp,
    metadata_perm_uuid varchar(255) UNIQUE NOT NULL,
    metadata_account_id varchar(255),
    metadata_user_id varchar(255),
    metadata_display_name varchar(255),
    metadata_state varchar(255),
    metadata_snapshot_parentvolume varchar(255),
    metadata_snapshot_vol_size int4,
    metadata_snapshot_sc_name varchar(255),
    metadata_snapshot_partition varchar(255)
);

INSERT INTO cloud_vm_type (id, version, creation_timestamp, last_update_timestamp, metadata_perm_uuid,
                           config_vm_type_name, config_vm_type_cpu, config_vm_type_disk, config_vm_type_memory)
VALUES ('8a2b0c6e4f1a4b7e9c0d000000000001', 0, now(), now(), 'a9b1c2d3-0000-4000-8000-000000000001',
        'm1.small', 1, 5, 256),
       ('8a2b0c6e4f1a4b7e9c0d000000000002', 0, now(), now(), 'a9b1c2d3-0000-4000-8000-000000000002',
        'c1.medium', 2, 10, 512),
       ('8a2b0c6e4f1a4b7e9c0d000000000003', 0, now(), now(), 'a9b1c2d3-0000-4000-8000-000000000003',
        'm1.large', 2, 10, 1024);

INSERT INTO metadata_instances (id, version, creation_timestamp, last_update_timestamp, metadata_perm_uuid,
    metadata_account_id, metadata_user_id, metadata_display_name, metadata_state, metadata_vm_type_id,
    metadata_vm_machine_image_id, metadata_vm_kernel_image_id, metadata_vm_ramdisk_image_id,
    metadata_vm_virtualization_type, metadata_vm_platform, metadata_vm_architecture,
    metadata_vm_partition_name, metadata_vm_cluster_name, metadata_vm_service_tag)
VALUES
    ('ff8081814b7a1c2d014b7a1f00000001', 3, now(), now(), 'b0000000-0000-4000-8000-000000000001',
     '000123456789', 'AIDAEXAMPLEUSER01', 'i-1a2b3c4d', 'RUNNING', '8a2b0c6e4f1a4b7e9c0d000000000001',
     'emi-0b1c2d3e', NULL, NULL, 'hvm', 'linux', 'x86_64', 'one', 'cc-one',
     'http://10.1.0.21:8775/axis2/services/EucalyptusNC'),
    ('ff8081814b7a1c2d014b7a1f00000002', 7, now(), now(), 'b0000000-0000-4000-8000-000000000002',
     '000123456789', 'AIDAEXAMPLEUSER01', 'i-5e6f7a8b', 'STOPPED', '8a2b0c6e4f1a4b7e9c0d000000000002',
     'emi-77aa88bb', 'eki-11223344', 'eri-55667788', 'paravirtualized', NULL, 'x86_64', 'one',
     'cc-one', NULL),
    ('ff8081814b7a1c2d014b7a1f00000003', 2, now(), now(), 'b0000000-0000-4000-8000-000000000003',
     '000123456789', 'AIDAEXAMPLEUSER01', 'i-0123456789abcdef0', 'TERMINATED',
     '8a2b0c6e4f1a4b7e9c0d000000000003', 'emi-99cc00dd', NULL, NULL, 'hvm', 'windows', 'x86_64', 'one',
     'cc-one', NULL);

INSERT INTO metadata_instances_persistent_volumes (vminstance_id, metadata_vm_volume_id,
    metadata_vm_volume_device, metadata_vm_volume_remote_device, metadata_vm_volume_is_root_device,
    metadata_vm_vol_delete_on_terminate, metadata_vm_volume_status, metadata_vm_volume_attach_time)
VALUES
    ('ff8081814b7a1c2d014b7a1f00000001', 'vol-4708bf47', '/dev/sda',
     'iscsi,tgt,,,,ENCRYPTED,,10.1.0.10,iqn.2009-06.com.eucalyptus.one:store1', true, true, 'attached', now()),
    ('ff8081814b7a1c2d014b7a1f00000002', 'vol-77778888', 'sda1', NULL, true, false, 'detached', now());

INSERT INTO metadata_instances_volume_attachments (vminstance_id, metadata_vm_volume_id,
    metadata_vm_volume_device, metadata_vm_volume_remote_device, metadata_vm_volume_is_root_device,
    metadata_vm_vol_delete_on_terminate, metadata_vm_volume_status, metadata_vm_volume_attach_time)
VALUES
    ('ff8081814b7a1c2d014b7a1f00000001', 'vol-0000da7b', '/dev/vdg',
     'iscsi,tgt,,,,ENCRYPTED,,10.1.0.10,iqn.2009-06.com.eucalyptus.one:store3', false, false, 'attached', now()),
    ('ff8081814b7a1c2d014b7a1f00000001', 'vol-0000da7a', '/dev/vdf',
     'iscsi,tgt,,,,ENCRYPTED,,10.1.0.10,iqn.2009-06.com.eucalyptus.one:store2', false, false, 'attached', now());

INSERT INTO metadata_volumes (id, version, creation_timestamp, last_update_timestamp, metadata_perm_uuid,
    metadata_account_id, metadata_user_id, metadata_display_name, metadata_state, metadata_volume_size,
    metadata_volume_partition, metadata_volume_sc_name, metadata_volume_parentsnapshot)
VALUES
    ('c0000000000000000000000000000001', 1, now(), now(), 'c1000000-0000-4000-8000-000000000001',
     '000123456789', 'AIDAEXAMPLEUSER01', 'vol-4708bf47', 'EXTANT', 1, 'one', 'one', 'snap-0b0b0b0b'),
    ('c0000000000000000000000000000002', 1, now(), now(), 'c1000000-0000-4000-8000-000000000002',
     '000123456789', 'AIDAEXAMPLEUSER01', 'vol-0000da7a', 'EXTANT', 2, 'one', 'one', NULL),
    ('c0000000000000000000000000000003', 1, now(), now(), 'c1000000-0000-4000-8000-000000000003',
     '000123456789', 'AIDAEXAMPLEUSER01', 'vol-0000da7b', 'EXTANT', 3, 'one', 'one', ''),
    ('c0000000000000000000000000000004', 1, now(), now(), 'c1000000-0000-4000-8000-000000000004',
     '000123456789', 'AIDAEXAMPLEUSER01', 'vol-77778888', 'EXTANT', 10, 'one', 'one', NULL),
    ('c0000000000000000000000000000005', 1, now(), now(), 'c1000000-0000-4000-8000-000000000005',
     '000123456789', 'AIDAEXAMPLEUSER01', 'vol-0fedcba987654321f', 'EXTANT', 1, 'one', 'one',
     'snap-5e6f7a8b'),
    ('c0000000000000000000000000000006', 1, now(), now(), 'c1000000-0000-4000-8000-000000000006',
     '000123456789', 'AIDAEXAMPLEUSER01', 'vol-dead0001', 'ANNIHILATED', 1, 'one', 'one', NULL);

INSERT INTO metadata_snapshots (id, version, creation_timestamp, last_update_timestamp, metadata_perm_uuid,
    metadata_account_id, metadata_user_id, metadata_display_name, metadata_state,
    metadata_snapshot_parentvolume, metadata_snapshot_vol_size, metadata_snapshot_sc_name,
    metadata_snapshot_partition)
VALUES
    ('d0000000000000000000000000000001', 1, now(), now(), 'd1000000-0000-4000-8000-000000000001',
     '000123456789', 'AIDAEXAMPLEUSER01', 'snap-5e6f7a8b', 'EXTANT', 'vol-4708bf47', 1, 'one', 'one'),
    ('d0000000000000000000000000000002', 1, now(), now(), 'd1000000-0000-4000-8000-000000000002',
     '000123456789', 'AIDAEXAMPLEUSER01', 'snap-99990000', 'GENERATING', 'vol-0000da7a', 2, 'one', 'one');

-- The running instance's identity, as a 4.x CLC stores it (key line from KeyPairs.getAuthKeyString:
-- "ssh-rsa <b64> <account>@eucalyptus.<keyName>"; user-data as raw bytes); the stopped one lost its
-- public address (0.0.0.0 placeholder) and has no key; the terminated one has a hostile MAC and key.
UPDATE metadata_instances SET
    metadata_vm_mac_address = 'D0:0D:1A:2B:3C:4D', metadata_vm_private_address = '172.16.4.21',
    metadata_vm_public_address = '10.111.5.77', metadata_vm_private_dns = 'euca-172-16-4-21.eucalyptus.internal',
    metadata_vm_public_dns = 'euca-10-111-5-77.eucalyptus.example.com', metadata_vm_private_addressing = false,
    metadata_vm_sshkey = 'ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDtestkeymaterialonly 000123456789@eucalyptus.ops-key',
    metadata_vm_user_data = convert_to(E'#!/bin/sh\necho provisioned > /root/first-boot\n', 'UTF8')
  WHERE metadata_display_name = 'i-1a2b3c4d';
UPDATE metadata_instances SET
    metadata_vm_mac_address = 'd0:0d:5e:6f:7a:8b', metadata_vm_private_address = '172.16.4.22',
    metadata_vm_public_address = '0.0.0.0', metadata_vm_private_dns = 'euca-172-16-4-22.eucalyptus.internal',
    metadata_vm_public_dns = ''
  WHERE metadata_display_name = 'i-5e6f7a8b';
UPDATE metadata_instances SET
    metadata_vm_mac_address = E'd0:0d:00:00:00:01\nx', metadata_vm_private_address = 'not-an-ip',
    metadata_vm_sshkey = E'ssh-rsa AAAA\nssh-rsa BBBB evil', metadata_vm_private_dns = E'x\x1b[31m.example'
  WHERE metadata_display_name = 'i-0123456789abcdef0';
