# SPDX-License-Identifier: Apache-2.0
# Verify job: the containers are attached read-only (snapshot=on). Activate everything, report
# the layout lvm sees, and hash every LV (and every dm node) with the guest kernel.
lv vgchange -ay 2>&1
begin lvs
lv lvs -a --reportformat json --units b --nosuffix -o vg_name,lv_name,lv_attr,lv_size,lv_role,segtype,seg_start,seg_size,seg_pe_ranges,devices,pool_lv,origin,data_lv,metadata_lv,chunk_size,transaction_id,thin_id,stripes,stripe_size,region_size,lv_dm_path,vg_extent_size 2>/dev/null
end lvs
begin pvs
lv pvs --reportformat json --units b --nosuffix -o pv_name,vg_name,pe_start,pv_size,dev_size 2>/dev/null
end pvs
begin dmtable
dmsetup table
end dmtable
begin dmstatus
dmsetup status
end dmstatus
for vg in vgraid vgthin vgcow; do
  begin vgcfg-$vg
  lv vgcfgbackup -f /tmp/$vg.vg $vg > /dev/null 2>&1 && cat /tmp/$vg.vg
  end vgcfg-$vg
done
begin hashes
for row in $(lv lvs -a --noheadings -o vg_name,lv_name,lv_dm_path --separator '|' 2>/dev/null | tr -d ' []'); do
  vg=${row%%|*}; rest=${row#*|}; name=${rest%%|*}; path=${rest#*|}
  if [ -b "$path" ]; then
    size=$(blockdev --getsize64 "$path")
    sum=$(timeout $LVM_TIMEOUT sha256sum < "$path" | cut -d' ' -f1)
    echo "LVHASH $vg/$name $size ${sum:-FAIL}"
  else
    echo "LVINACTIVE $vg/$name"
  fi
done
for path in /dev/mapper/*; do
  [ -b "$path" ] || continue
  size=$(blockdev --getsize64 "$path")
  sum=$(timeout $LVM_TIMEOUT sha256sum < "$path" | cut -d' ' -f1)
  echo "DMHASH ${path#/dev/mapper/} $size ${sum:-FAIL}"
done
end hashes
lv vgchange -an 2>&1
