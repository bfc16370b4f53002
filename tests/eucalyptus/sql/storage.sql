-- SPDX-License-Identifier: Apache-2.0
-- Eucalyptus SC (eucalyptus_storage) tables used by the inventory (overlay backend), with rows
-- matching cloud.sql: one iscsivolumeinfo row per volume and per snapshot, the running instance's
-- volumes exported (lodev_name set, tid/storename filled, active volume_exports rows), a local
-- snapshot file, and a custom volumes dir.

CREATE TABLE volumes (
    id varchar(255) PRIMARY KEY,
    version int4,
    creation_timestamp timestamp,
    last_update_timestamp timestamp,
    metadata_perm_uuid varchar(255) UNIQUE NOT NULL,
    volume_name varchar(255),
    sc_name varchar(255),
    user_name varchar(255),
    size int4,
    status varchar(255),
    create_time timestamp,
    zone varchar(255),
    snapshot_id varchar(255),
    is_snapshot bool
);

CREATE TABLE snapshots (
    id varchar(255) PRIMARY KEY,
    version int4,
    creation_timestamp timestamp,
    last_update_timestamp timestamp,
    metadata_perm_uuid varchar(255) UNIQUE NOT NULL,
    snapshot_name varchar(255),
    sc_name varchar(255),
    user_name varchar(255),
    volume_name varchar(255),
    status varchar(255),
    start_time timestamp,
    progress varchar(255),
    snapshot_location varchar(255),
    snapshot_size_gb int4,
    is_origin bool,
    previous_snapshot_id varchar(255)
);

CREATE TABLE iscsivolumeinfo (
    id varchar(255) PRIMARY KEY,
    version int4,
    creation_timestamp timestamp,
    last_update_timestamp timestamp,
    metadata_perm_uuid varchar(255) UNIQUE NOT NULL,
    sc_name varchar(255),
    volume_name varchar(255),
    lodev_name varchar(255),
    lofile_name varchar(255),
    pv_name varchar(255),
    vg_name varchar(255),
    lv_name varchar(255),
    size int4,
    status varchar(255),
    snapshot_of varchar(255),
    cleanup bool,
    storename varchar(255),
    tid int4,
    lun int4,
    storeuser varchar(255)
);

CREATE TABLE direct_storage_info (
    id varchar(255) PRIMARY KEY,
    version int4,
    creation_timestamp timestamp,
    last_update_timestamp timestamp,
    metadata_perm_uuid varchar(255) UNIQUE NOT NULL,
    storage_name varchar(255),
    system_storage_volumes_dir varchar(255),
    zero_fill_volumes bool,
    system_storage_timeout_in_millis int8
);

CREATE TABLE das_info (
    id varchar(255) PRIMARY KEY,
    version int4,
    creation_timestamp timestamp,
    last_update_timestamp timestamp,
    metadata_perm_uuid varchar(255) UNIQUE NOT NULL,
    storage_name varchar(255),
    das_device varchar(255)
);

CREATE TABLE volume_tokens (
    id varchar(255) PRIMARY KEY,
    version int4,
    creation_timestamp timestamp,
    last_update_timestamp timestamp,
    metadata_perm_uuid varchar(255) UNIQUE NOT NULL,
    token varchar(255) UNIQUE NOT NULL,
    volume varchar(255) REFERENCES volumes(id),
    is_valid bool
);

CREATE TABLE volume_exports (
    id varchar(255) PRIMARY KEY,
    version int4,
    creation_timestamp timestamp,
    last_update_timestamp timestamp,
    metadata_perm_uuid varchar(255) UNIQUE NOT NULL,
    token varchar(255) NOT NULL REFERENCES volume_tokens(id),
    volume varchar(255) NOT NULL REFERENCES volumes(id),
    host_ip varchar(255) NOT NULL,
    host_iqn varchar(255) NOT NULL,
    is_active bool,
    connection_string varchar(4096)
);

INSERT INTO volumes (id, version, metadata_perm_uuid, volume_name, sc_name, user_name, size, status, zone,
                     snapshot_id)
VALUES
    ('e0000000000000000000000000000001', 1, 'e1000000-0000-4000-8000-000000000001', 'vol-4708bf47', 'one',
     '000123456789', 1, 'available', 'one', 'snap-0b0b0b0b'),
    ('e0000000000000000000000000000002', 1, 'e1000000-0000-4000-8000-000000000002', 'vol-0000da7a', 'one',
     '000123456789', 2, 'available', 'one', NULL),
    ('e0000000000000000000000000000003', 1, 'e1000000-0000-4000-8000-000000000003', 'vol-0000da7b', 'one',
     '000123456789', 3, 'available', 'one', NULL),
    ('e0000000000000000000000000000004', 1, 'e1000000-0000-4000-8000-000000000004', 'vol-77778888', 'one',
     '000123456789', 10, 'available', 'one', NULL),
    ('e0000000000000000000000000000005', 1, 'e1000000-0000-4000-8000-000000000005', 'vol-0fedcba987654321f',
     'one', '000123456789', 1, 'available', 'one', 'snap-5e6f7a8b'),
    -- a volume the SC knows but the CLC has already forgotten (e.g. a half-finished delete)
    ('e0000000000000000000000000000006', 1, 'e1000000-0000-4000-8000-000000000006', 'vol-5c000001', 'one',
     '000123456789', 4, 'failed', 'one', NULL);

INSERT INTO snapshots (id, version, metadata_perm_uuid, snapshot_name, sc_name, user_name, volume_name, status,
                       progress, snapshot_location, snapshot_size_gb, is_origin, previous_snapshot_id)
VALUES
    ('f0000000000000000000000000000001', 1, 'f1000000-0000-4000-8000-000000000001', 'snap-5e6f7a8b', 'one',
     '000123456789', 'vol-4708bf47', 'available', '100',
     'snapshots://objectstoragegateway/snapshots-0f1e2d3c4b5a69788796a5b4c3d2e1f0/snap-5e6f7a8b', 1, true,
     NULL),
    ('f0000000000000000000000000000002', 1, 'f1000000-0000-4000-8000-000000000002', 'snap-99990000', 'one',
     '000123456789', 'vol-0000da7a', 'creating', '42', NULL, 2, true, NULL);

INSERT INTO iscsivolumeinfo (id, version, metadata_perm_uuid, sc_name, volume_name, lodev_name, lofile_name,
                             pv_name, vg_name, lv_name, size, status, snapshot_of, cleanup, storename, tid,
                             lun, storeuser)
VALUES
    ('90000000000000000000000000000001', 4, '91000000-0000-4000-8000-000000000001', 'one', 'vol-4708bf47',
     '/dev/loop3', NULL, '/dev/loop3', 'euca-ebs-storage-vg-vol-4708bf47', 'euca-vol-4708bf47', 1,
     'available', NULL, false, 'iqn.2009-06.com.eucalyptus.one:store1', 1, 1, 'eucalyptus'),
    ('90000000000000000000000000000002', 4, '91000000-0000-4000-8000-000000000002', 'one', 'vol-0000da7a',
     '/dev/loop4', NULL, '/dev/loop4', 'euca-ebs-storage-vg-vol-0000da7a', 'euca-vol-0000da7a', 2,
     'available', NULL, false, 'iqn.2009-06.com.eucalyptus.one:store2', 2, 1, 'eucalyptus'),
    ('90000000000000000000000000000003', 4, '91000000-0000-4000-8000-000000000003', 'one', 'vol-0000da7b',
     '/dev/loop5', NULL, '/dev/loop5', 'euca-ebs-storage-vg-vol-0000da7b', 'euca-vol-0000da7b', 3,
     'available', NULL, false, 'iqn.2009-06.com.eucalyptus.one:store3', 3, 1, 'eucalyptus'),
    -- upgraded from 3.2: legacy random VG/LV names, not exported
    ('90000000000000000000000000000004', 2, '91000000-0000-4000-8000-000000000004', 'one', 'vol-77778888',
     NULL, NULL, NULL, 'vg-Yw9n', 'lv-Q2xp', 10, 'available', NULL, false, NULL, NULL, NULL, NULL),
    ('90000000000000000000000000000005', 1, '91000000-0000-4000-8000-000000000005', 'one',
     'vol-0fedcba987654321f', NULL, NULL, NULL, 'euca-ebs-storage-vg-vol-0fedcba987654321f',
     'euca-vol-0fedcba987654321f', 1, 'available', NULL, false, NULL, NULL, NULL, NULL),
    ('90000000000000000000000000000006', 1, '91000000-0000-4000-8000-000000000006', 'one', 'snap-5e6f7a8b',
     NULL, '/srv/euca/volumes/snap-5e6f7a8b', NULL, 'euca-ebs-storage-vg-vol-4708bf47', 'euca-snap-5e6f7a8b', 1,
     'available', 'vol-4708bf47', false, NULL, NULL, NULL, NULL);

INSERT INTO direct_storage_info (id, version, metadata_perm_uuid, storage_name, system_storage_volumes_dir,
                                 zero_fill_volumes)
VALUES ('a0000000000000000000000000000001', 1, 'a1000000-0000-4000-8000-000000000001', 'one',
        '/srv/euca/volumes', false);

INSERT INTO volume_tokens (id, version, metadata_perm_uuid, token, volume, is_valid)
VALUES
    ('b0000000000000000000000000000001', 1, 'b1000000-0000-4000-8000-000000000001', 'tok-boot',
     'e0000000000000000000000000000001', true),
    ('b0000000000000000000000000000002', 1, 'b1000000-0000-4000-8000-000000000002', 'tok-data-a',
     'e0000000000000000000000000000002', true),
    ('b0000000000000000000000000000003', 1, 'b1000000-0000-4000-8000-000000000003', 'tok-data-b',
     'e0000000000000000000000000000003', true),
    ('b0000000000000000000000000000004', 1, 'b1000000-0000-4000-8000-000000000004', 'tok-old',
     'e0000000000000000000000000000004', false);

INSERT INTO volume_exports (id, version, metadata_perm_uuid, token, volume, host_ip, host_iqn, is_active,
                            connection_string)
VALUES
    ('c9000000000000000000000000000001', 1, 'c9100000-0000-4000-8000-000000000001',
     'b0000000000000000000000000000001', 'e0000000000000000000000000000001', '10.1.0.21',
     'iqn.1994-05.com.redhat:nc21', true, 'iscsi,tgt,,,,ENCRYPTED,,10.1.0.10,iqn.2009-06.com.eucalyptus.one:store1'),
    ('c9000000000000000000000000000002', 1, 'c9100000-0000-4000-8000-000000000002',
     'b0000000000000000000000000000002', 'e0000000000000000000000000000002', '10.1.0.21',
     'iqn.1994-05.com.redhat:nc21', true, 'iscsi,tgt,,,,ENCRYPTED,,10.1.0.10,iqn.2009-06.com.eucalyptus.one:store2'),
    ('c9000000000000000000000000000003', 1, 'c9100000-0000-4000-8000-000000000003',
     'b0000000000000000000000000000003', 'e0000000000000000000000000000003', '10.1.0.21',
     'iqn.1994-05.com.redhat:nc21', true, 'iscsi,tgt,,,,ENCRYPTED,,10.1.0.10,iqn.2009-06.com.eucalyptus.one:store3'),
    -- an old, finished export of the stopped instance's root volume
    ('c9000000000000000000000000000004', 1, 'c9100000-0000-4000-8000-000000000004',
     'b0000000000000000000000000000004', 'e0000000000000000000000000000004', '10.1.0.22',
     'iqn.1994-05.com.redhat:nc22', false, NULL);

-- SAN backends (SANVolumeInfo, table san_volume_info; 4.x column names as the 4.0 upgrade copies them):
-- the LUN on the array is named resourceprefix + volume id + resourcesuffix (san_volume_id), one row
-- per volume and snapshot; a 3.x row upgraded without san_volume_id; the CHAP password never leaves.
CREATE TABLE san_volume_info (
    id varchar(255) PRIMARY KEY,
    version int4,
    creation_timestamp timestamp,
    last_update_timestamp timestamp,
    metadata_perm_uuid varchar(255) UNIQUE NOT NULL,
    volumeid varchar(255),
    scname varchar(255),
    iqn varchar(255),
    storeuser varchar(255),
    encryptedpassword text,
    size int4,
    status varchar(255),
    snapshot_of varchar(255),
    san_volume_id varchar(255)
);

INSERT INTO san_volume_info (id, version, metadata_perm_uuid, volumeid, scname, iqn, storeuser, encryptedpassword,
                             size, status, snapshot_of, san_volume_id)
VALUES
    ('d5000000000000000000000000000001', 1, 'd5100000-0000-4000-8000-000000000001', 'vol-5a000001', 'one',
     'iqn.1992-08.com.netapp:sn.4082367740:vs.3', 'eucalyptus', 'SECRET-CHAP-5a1', 2, 'available', NULL,
     'euca-vol-5a000001-lun'),
    ('d5000000000000000000000000000002', 1, 'd5100000-0000-4000-8000-000000000002', 'snap-5a000002', 'one',
     'iqn.1992-08.com.netapp:sn.4082367740:vs.3', 'eucalyptus', 'SECRET-CHAP-5a2', 2, 'available', 'vol-5a000001',
     'euca-snap-5a000002-lun'),
    ('d5000000000000000000000000000003', 1, 'd5100000-0000-4000-8000-000000000003', 'vol-5a000003', 'one',
     'iqn.2001-05.com.equallogic:0-8a0906-00000003', NULL, NULL, 1, 'available', NULL, NULL);
